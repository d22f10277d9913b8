"""Released mode of ``ingest`` (4b/8b profiles): convert the published datasets into the artifact's one schema.

Each source file (a webdataset ``.tar`` or a ``.parquet``, found recursively under a pool's folder, sorted) is one
engine task: :func:`convert_source`, a pure function of the file and its pool's options, reads it in its published
format (:mod:`llava_ov.data.formats`), admits every sample (:func:`~llava_ov.data.admission.admit`) and writes a
part (:mod:`llava_ov.data.parts`): the kept samples in one shard (``<pool>/<file>.tar``, key = sample id), their
index rows, uint64 id and image arrays, and the rejections. It holds one file's rows and one parquet row group at a
time. The part is cached under (the file's content digest, its path in the pool, the pool options, the code that
converts), so a run after adding one file converts that file alone; digests are recorded per file and re-hashed
only when its size or mtime changed (:mod:`llava_ov.data.source_digests`).

Converting stores a copy of the data in the artifact (hard-linked from the cache: no second copy on disk). That is
deliberate: every stage after ``ingest`` reads one schema through one reader, a kept sample's bytes cannot change
under the artifact's digest, and sample ids, duplicates and rejections are settled once.

What needs the whole pool, duplicates across files and the eval pool against the training pools, is settled by
the driver on ids alone (:mod:`llava_ov.data.assemble`). ``shards.json`` records every source file's digest,
format, converted shard and counts.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from llava_ov.artifacts import digest_file, digest_json, write_json
from llava_ov.data.admission import admit
from llava_ov.data.assemble import assemble
from llava_ov.data.filters import Filters
from llava_ov.data.formats import FORMATS, read_members, source_format
from llava_ov.data.parts import LOCAL, Part, PartWriter, cache_or_scratch, cached_part, map_largest_first
from llava_ov.data.source_digests import SourceDigests
from llava_ov.data.sources import POOLS
from llava_ov.data.validate import Rejected
from llava_ov.engine import Engine
from llava_ov.shard_cache import ShardCache, code_digest

RELEASED_ROOT = "data/released"  # ingest's DVC dep in dvc.yaml: DVC reruns ingest when a file in it changes
# the modules whose code decides a converted file (the per-file cache key)
CODE = ("llava_ov.data.released", "llava_ov.data.formats", "llava_ov.data.shards", "llava_ov.data.validate",
        "llava_ov.data.admission", "llava_ov.data.filters", "llava_ov.data.parts", "llava_ov.vision.image_processing")


@dataclass(frozen=True)
class PoolOptions:
    """Everything besides a source file's bytes that its conversion depends on."""

    pool: str
    source: str                        # the ``source`` of samples that do not name one: the pool folder's name
    format: str = "auto"               # a name from llava_ov.data.formats.FORMATS, or "auto" (told per file)
    dedupe: bool = False
    filters: Filters = Filters()


def source_files(folder: Path) -> list[Path]:
    """The ``.tar`` and ``.parquet`` files under ``folder``, at any depth, sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.suffix in (".tar", ".parquet") and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def shard_name(rel: str) -> str:
    """The converted shard's file stem for a source file's relative path (folders joined by ``__``)."""
    return rel.rsplit(".", 1)[0].replace("/", "__")


def check_tracked(cfg: dict) -> None:
    """Every released pool folder must be under :data:`RELEASED_ROOT`: DVC watches that folder (``dvc.yaml``), so
    a file added, changed or removed elsewhere would leave a stale artifact standing."""
    outside = {pool: folder for pool, folder in (cfg.get("released") or {}).items()
               if folder and not os.path.normpath(folder).startswith(f"{RELEASED_ROOT}{os.sep}")}
    if outside:
        raise ValueError(f"ingest.released: {outside} not under {RELEASED_ROOT}/, the folder dvc.yaml declares as "
                         f"ingest's dependency; move the data there")


def convert_source(path: Path, rel: str, opts: PoolOptions, folder: Path) -> dict:
    """Convert one source file into a part in ``folder`` (its shard: ``<pool>/<shard_name(rel)>.tar``); a pure
    function of its inputs. Returns the part's summary.

    Duplicates within the file are settled here (the first keeps the content id); duplicates of earlier files
    and the eval pool's overlap with the training pools, by the driver. A truncated or unreadable file raises,
    naming it.
    """
    fmt = source_format(path, opts.format)
    part = PartWriter(folder, rel, shard_name(rel), opts.dedupe, located=True)
    members = read_members(path, fmt, auto=opts.format == "auto") if fmt is not None else []
    for m in tqdm(members, desc=rel, unit="sample", leave=False, mininterval=2.0):
        source = str((m.meta or {}).get("source") or opts.source)
        try:
            if m.reason:
                raise Rejected(m.reason)
            sample = admit(m.meta, m.images, opts.filters)
        except Rejected as e:
            part.reject(opts.pool, e.sample_id or m.claimed_id, source, str(e), m.key)
            continue
        part.keep(opts.pool, sample, source, m.key, {**sample.meta, "source": source, "origin": part.where(m.key)},
                  m.images)
    return part.close(format=fmt)


@dataclass(frozen=True)
class FileJob:
    """One source file to convert: where it is, what its pool asks, and what is known of it."""

    path: str       # absolute: a worker on another node shares the filesystem, not the working directory
    rel: str        # relative to the pool folder
    opts: PoolOptions
    size: int       # as the driver saw it: the task refuses a file that changes under it
    mtime_ns: int
    digest: str | None  # recorded content digest, or None: the task hashes the file
    cache: ShardCache


@dataclass(frozen=True)
class Converted:
    part: str       # the part's folder (a cache entry)
    digest: str     # the file's content digest
    hashed: bool    # the task read the file to hash it
    converted: bool  # a cache miss: the task converted the file


def convert_file(job: FileJob) -> Converted:
    """The engine task of one source file: its cached part, converted on a miss."""
    digest = job.digest or digest_file(job.path)
    part, converted = cached_part(job.cache, digest_json([digest, job.rel]),
                                  lambda folder: convert_source(Path(job.path), job.rel, job.opts, folder))
    st = os.stat(job.path)
    if (converted or job.digest is None) and (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
        raise RuntimeError(f"{job.path} changed while ingest read it; run ingest again")
    return Converted(part, digest, job.digest is None, converted)


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
        code = code_digest(*CODE)
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
