"""Released mode of ``ingest`` (4b/8b profiles): convert the published datasets into the artifact's one schema.

Each source file (a webdataset ``.tar`` or a ``.parquet``, found recursively under a pool's folder, sorted) is
converted by :func:`convert_source`, a pure function of the file and its pool's options: it reads the file in its
published format (:mod:`llava_ov.data.formats`), admits every sample (:func:`~llava_ov.data.admission.admit`) and
writes the kept ones into one shard of the artifact (``<pool>/<file>.tar``, key = sample id), returning index rows
and rejections. It holds one file's rows and one parquet row group at a time, so it can run per file on workers.

Converting stores a copy of the data in the artifact. That is deliberate: every stage after ``ingest`` reads one
schema through one reader, a kept sample's bytes cannot change under the artifact's digest, and sample ids,
duplicates and rejections are settled once.

What needs the whole pool is done after each file, by the caller, on ids alone: a sample whose content already
came in an earlier file of its pool is a duplicate (dropped with ``ingest.dedupe``, else kept under
:func:`~llava_ov.data.admission.derived_id`); the eval pool is checked against the training pools' image and sample
ids. ``shards.json`` records every source file's digest, format, converted shard and counts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llava_ov.artifacts import digest_file, write_json
from llava_ov.data.admission import Ledger, TrainingSet, admit, duplicate, image_hashes, index_row, place
from llava_ov.data.filters import Filters
from llava_ov.data.formats import FORMATS, read_members, source_format
from llava_ov.data.shards import ShardWriter, encode_meta, read_shard
from llava_ov.data.sources import POOLS
from llava_ov.data.validate import Rejected


@dataclass(frozen=True)
class PoolOptions:
    """Everything besides a source file's bytes that its conversion depends on."""

    pool: str
    source: str                        # the ``source`` of samples that do not name one: the pool folder's name
    format: str = "auto"               # a name from llava_ov.data.formats.FORMATS, or "auto" (told per file)
    dedupe: bool = False
    filters: Filters = Filters()
    training: TrainingSet | None = None  # eval pool: what it must not share with the training pools


@dataclass
class SourceResult:
    """One source file, converted: its kept rows, its rejections and what the pool-level checks need."""

    file: str                          # relative to the pool folder
    format: str | None
    shard: str | None                  # the converted shard, relative to the artifact root (None: nothing kept)
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    origins: list[tuple[str, str]] = field(default_factory=list)  # per row: (content id, key in the file)
    images: np.ndarray = field(default_factory=lambda: image_hashes([]))  # digests of the kept images

    @property
    def samples(self) -> int:
        return len(self.rows) + len(self.rejects)


def source_files(folder: Path) -> list[Path]:
    """The ``.tar`` and ``.parquet`` files under ``folder``, at any depth, sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.suffix in (".tar", ".parquet") and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def shard_name(rel: str) -> str:
    """The converted shard's file stem for a source file's relative path (folders joined by ``__``)."""
    return rel.rsplit(".", 1)[0].replace("/", "__")


def convert_source(path: Path, rel: str, opts: PoolOptions, out: Path) -> SourceResult:
    """Convert one source file into ``out/<pool>/<shard_name(rel)>.tar``; a pure function of its inputs.

    Duplicates within the file are settled here (the first keeps the content id); duplicates of earlier files
    are the caller's (:func:`settle_duplicates`). A truncated or unreadable file raises, naming it.
    """
    fmt = source_format(path, opts.format)
    result = SourceResult(rel, fmt, None)
    if fmt is None:
        return result
    writer = ShardWriter(out / opts.pool, shard_name(rel), numbered=False)
    seen: set[str] = set()
    hashes = []
    members = read_members(path, fmt, auto=opts.format == "auto")
    for m in tqdm(members, desc=rel, unit="sample", leave=False, mininterval=2.0):
        where = f"{rel}:{m.key}"
        source = str((m.meta or {}).get("source") or opts.source)
        try:
            if m.reason:
                raise Rejected(m.reason)
            sample = admit(m.meta, m.images, opts.filters, opts.training)
        except Rejected as e:
            result.rejects.append(_reject(e.sample_id or m.claimed_id, source, str(e), where))
            continue
        content = sample.sample_id
        sid = place(content, seen, opts.dedupe, rel, m.key)
        if sid is None:
            result.rejects.append(_reject(content, source, duplicate(opts.pool), where))
            continue
        seen.add(content)
        meta = {**sample.meta, "id": sid, "source": source, "origin": where}
        shard = writer.write(sid, {"json": encode_meta(meta), **m.images})
        result.rows.append(index_row(sample, sid, opts.pool, source, f"{opts.pool}/{shard}"))
        result.origins.append((content, m.key))
        hashes.append(image_hashes(sample.images))
    writer.close()
    result.shard = f"{opts.pool}/{writer.shards[0].name}" if writer.shards else None
    result.images = np.concatenate(hashes) if hashes else result.images
    return result


def _reject(sid: str, source: str, reason: str, where: str) -> dict:
    return {"sample_id": sid, "source": source, "reason": reason, "where": where}


def settle_duplicates(result: SourceResult, pool_ids: set[str], opts: PoolOptions, out: Path) -> None:
    """Settle samples of ``result`` whose content came in an earlier file of the pool (ids in ``pool_ids``).

    With dedupe they become rejections, else they take :func:`~llava_ov.data.admission.derived_id`; the file's
    converted shard is then rewritten (rare: exact duplicates across files), so the artifact holds exactly the
    kept samples.
    """
    renames = {content: place(content, pool_ids, opts.dedupe, result.file, key)
               for row, (content, key) in zip(result.rows, result.origins)
               if row["sample_id"] == content and content in pool_ids}  # first in its file, not in its pool
    if not renames:
        return
    rows = []
    for row, (content, key) in zip(result.rows, result.origins):
        new = renames.get(row["sample_id"], row["sample_id"])
        if new is None:
            result.rejects.append(_reject(content, row["source"], duplicate(opts.pool), f"{result.file}:{key}"))
        else:
            rows.append({**row, "sample_id": new, "key": new})
    result.rows = rows
    _rewrite_shard(out / result.shard, renames)
    if not rows:
        (out / result.shard).unlink()
        result.shard = None


def _rewrite_shard(path: Path, renames: dict[str, str | None]) -> None:
    """Rewrite a converted shard with samples renamed (json id too) or dropped (``None``)."""
    staged = path.with_name(f"{path.stem}.rewrite")
    with ShardWriter(path.parent, staged.name, numbered=False) as writer:
        for raw in read_shard(path):
            new = renames.get(raw.key, raw.key)
            if new is None:
                continue
            files = dict(raw.files)
            if new != raw.key:
                files["json"] = encode_meta({**json.loads(files["json"]), "id": new})
            writer.write(new, files)
    os.replace(staged.with_name(f"{staged.name}.tar"), path)


def validate_released(cfg: dict, root: Path, out: Path) -> dict:
    """Convert every pool's released files (``ingest.released.<pool>``: a folder under ``root``) into ``out``.

    Params: ``ingest.formats.<pool>`` (a format name, default ``auto``), ``ingest.dedupe`` (default false: exact
    duplicates are kept under ids of their own), ``ingest.filters.<pool>`` (the published caption/image filters).
    Pools go in order (align, mid, instruct, eval), so eval is checked against every training pool.
    """
    t0 = time.perf_counter()
    ledger = Ledger()
    sources: dict[str, dict] = {}
    formats, filters = cfg.get("formats") or {}, cfg.get("filters") or {}
    unknown = {pool: f for pool, f in formats.items() if f not in ("auto", *FORMATS)}
    if unknown:
        raise ValueError(f"ingest.formats: unknown format(s) {unknown}; known: auto, {', '.join(FORMATS)}")
    training_images: list[np.ndarray] = []
    for pool in POOLS:
        folder = cfg["released"].get(pool)
        if not folder:
            continue
        paths = source_files(root / folder)
        if not paths:
            raise FileNotFoundError(f"ingest.released.{pool}: no .tar or .parquet files in {root / folder}; put the "
                                    f"released data there (see README, 'Real-scale profiles')")
        opts = PoolOptions(pool, Path(folder).name, formats.get(pool, "auto"), bool(cfg.get("dedupe", False)),
                           Filters.from_params(filters.get(pool)),
                           ledger.training_set(training_images) if pool == "eval" else None)
        _check_names(folder, [p.relative_to(root / folder).as_posix() for p in paths])
        for path in tqdm(paths, desc=f"ingest {pool}", unit="file"):
            rel = path.relative_to(root / folder).as_posix()
            result = convert_source(path, rel, opts, out)
            settle_duplicates(result, ledger.ids[pool], opts, out)
            for row in result.rows:
                ledger.keep(row)
            for r in result.rejects:
                ledger.reject(r["sample_id"], pool, r["source"], r["reason"], r["where"])
            if pool != "eval":
                training_images.append(result.images)
            sources[f"{folder}/{rel}"] = {"digest": digest_file(path), "format": result.format, "pool": pool,
                                          "shard": result.shard, "samples": result.samples,
                                          "kept": len(result.rows), "rejected": len(result.rejects)}
    if not sources:
        raise ValueError("ingest.mode is 'released' but ingest.released names no pool folders")
    write_json(out / "shards.json", sources)
    metrics = ledger.write(out, time.perf_counter() - t0)
    metrics["files"] = {name: {k: v[k] for k in ("format", "samples", "kept", "rejected")}
                        for name, v in sources.items()}
    return metrics


def _check_names(folder: str, rels: list[str]) -> None:
    """Two source files must not convert to the same shard name (e.g. ``a.tar`` and ``a.parquet``)."""
    by_name: dict[str, str] = {}
    for rel in rels:
        other = by_name.setdefault(shard_name(rel), rel)
        if other != rel:
            raise ValueError(f"{folder}: {other!r} and {rel!r} would both convert to shard "
                             f"{shard_name(rel)}.tar; rename one")
