"""Released mode of ``ingest`` (4b/8b profiles): convert the published datasets into the artifact's one schema.

Each source file (a webdataset ``.tar`` or a ``.parquet``, found recursively under a pool's folder, sorted) is one
engine task (:func:`llava_ov.data.convert.convert_file`): a pure function of the file and its pool's options that
converts it into a part (its kept samples in one shard ``<pool>/<file>.tar``, key = sample id, plus their rows,
arrays and rejections), cached per file, so a run after adding one file converts that file alone. Source digests
are recorded per file and re-hashed only when its size or mtime changed (:mod:`llava_ov.data.source_digests`).

Converting stores a copy of the data in the artifact (hard-linked from the cache: no second copy on disk). That is
deliberate: every stage after ``ingest`` reads one schema through one reader, a kept sample's bytes cannot change
under the artifact's digest, and sample ids, duplicates and rejections are settled once.

What needs the whole pool, duplicates across files and the eval pool against the training pools, is settled by
the driver on ids alone (:mod:`llava_ov.data.settle`, :mod:`llava_ov.data.assemble`). ``shards.json`` records every source file's digest,
format, converted shard and counts.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from llava_ov.artifacts import write_json
from llava_ov.code_digest import code_digest
from llava_ov.data.assemble import LOCAL, assemble, cache_or_scratch, map_largest_first
from llava_ov.data.convert import FileJob, PoolOptions, convert_file, shard_name
from llava_ov.data.filters import Filters
from llava_ov.data.formats import FORMATS
from llava_ov.data.parts import Part
from llava_ov.data.source_digests import SourceDigests
from llava_ov.data.sources import POOLS
from llava_ov.engine import Engine
from llava_ov.shard_cache import ShardCache

RELEASED_ROOT = "data/released"  # ingest's DVC dep in dvc.yaml: DVC reruns ingest when a file in it changes


def source_files(folder: Path) -> list[Path]:
    """The ``.tar`` and ``.parquet`` files under ``folder``, at any depth, sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.suffix in (".tar", ".parquet") and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def check_tracked(cfg: dict) -> None:
    """Every released pool folder must be under :data:`RELEASED_ROOT`: DVC watches that folder (``dvc.yaml``), so
    a file added, changed or removed elsewhere would leave a stale artifact standing."""
    outside = {pool: folder for pool, folder in (cfg.get("released") or {}).items()
               if folder and not os.path.normpath(folder).startswith(f"{RELEASED_ROOT}{os.sep}")}
    if outside:
        raise ValueError(f"ingest.released: {outside} not under {RELEASED_ROOT}/, the folder dvc.yaml declares as "
                         f"ingest's dependency; move the data there")


def validate_released(cfg: dict, root: Path, out: Path, *, cache: Path | None = None,
                      engine: Engine = LOCAL) -> dict:
    """Convert every pool's released files (``ingest.released.<pool>``: a folder under ``root``) into ``out``.

    Params: ``ingest.formats.<pool>`` (a format name, default ``auto``), ``ingest.dedupe`` (default false: exact
    duplicates are kept under ids of their own), ``ingest.filters.<pool>`` (the published caption/image filters).
    One engine task per file; parts are cached under ``cache`` (None: a scratch folder, removed afterwards).
    """
    t0 = time.perf_counter()
    formats, filters = cfg.get("formats") or {}, cfg.get("filters") or {}
    unknown = {pool: f for pool, f in formats.items() if f not in ("auto", *FORMATS)}
    if unknown:
        raise ValueError(f"ingest.formats: unknown format(s) {unknown}; known: auto, {', '.join(FORMATS)}")
    folders = {pool: cfg["released"][pool] for pool in POOLS if (cfg.get("released") or {}).get(pool)}
    if not folders:
        raise ValueError("ingest.mode is 'released' but ingest.released names no pool folders")
    with cache_or_scratch(cache, out) as cache_root:
        known = SourceDigests.load(cache_root)
        code = code_digest("llava_ov.data.convert")
        jobs, names = [], []
        for pool, folder in folders.items():
            paths = source_files(root / folder)
            if not paths:
                raise FileNotFoundError(f"ingest.released.{pool}: no .tar or .parquet files in {root / folder}; put "
                                        f"the released data there (see README, 'Real-scale profiles')")
            _check_names(folder, [p.relative_to(root / folder).as_posix() for p in paths])
            opts = PoolOptions(pool, Path(folder).name, formats.get(pool, "auto"), bool(cfg.get("dedupe", False)),
                               Filters.from_params(filters.get(pool)))
            pool_cache = ShardCache(cache_root, code, params=asdict(opts), suffix="")
            for path in paths:
                st, rel = path.stat(), path.relative_to(root / folder).as_posix()
                names.append(f"{folder}/{rel}")
                jobs.append(FileJob(str(path.resolve()), rel, opts, st.st_size, st.st_mtime_ns,
                                    known.known(names[-1], st.st_size, st.st_mtime_ns), pool_cache))
        done = map_largest_first(engine, convert_file, jobs, [job.size for job in jobs], desc="ingest")
        for name, job, result in zip(names, jobs, done):
            known.record(name, job.size, job.mtime_ns, result.digest)
        known.save(set(names))
        parts = [Part.open(result.part) for result in done]
        assembled = assemble(parts, out, bool(cfg.get("dedupe", False)))
    sources = {}
    for name, job, result, part, outcome in zip(names, jobs, done, parts, assembled.outcomes):
        pool = outcome.get(job.opts.pool, {"kept": 0, "rejected": 0, "shards": []})
        sources[name] = {"digest": result.digest, "format": part.summary["format"], "pool": job.opts.pool,
                         "shard": pool["shards"][0] if pool["shards"] else None,
                         "samples": pool["kept"] + pool["rejected"], "kept": pool["kept"],
                         "rejected": pool["rejected"]}
    write_json(out / "shards.json", sources)
    return {**assembled.metrics,
            "files": {name: {k: v[k] for k in ("format", "samples", "kept", "rejected")} for name, v in sources.items()},
            "cache": {"files": len(jobs), "hashed": sum(r.hashed for r in done),
                      "converted": sum(r.converted for r in done)},
            "seconds": round(time.perf_counter() - t0, 2)}


def _check_names(folder: str, rels: list[str]) -> None:
    """Two source files must not convert to the same shard name (e.g. ``a.tar`` and ``a.parquet``)."""
    by_name: dict[str, str] = {}
    for rel in rels:
        other = by_name.setdefault(shard_name(rel), rel)
        if other != rel:
            raise ValueError(f"{folder}: {other!r} and {rel!r} would both convert to shard "
                             f"{shard_name(rel)}.tar; rename one")
