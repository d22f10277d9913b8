"""The engine task of released-mode ``ingest``: one source file converted into a part, cached per file.

:func:`convert_source` is a pure function of a source file and its pool's options: it reads the file in its
published format (:mod:`llava_ov.data.formats`), admits every sample (:func:`~llava_ov.data.admission.admit`) and
writes a part (:mod:`llava_ov.data.parts`): the kept samples in one shard (``<pool>/<file>.tar``, key = sample id),
their index rows, uint64 id and image arrays, and the rejections. It holds one file's rows and one parquet row
group at a time.

:func:`convert_file` caches the part under (the file's content digest, its path in the pool, the pool options,
:func:`~llava_ov.code_digest.code_digest` of this module: everything that decides the part), in a
:class:`~llava_ov.folder_cache.FolderCache` whose hits cost a ``stat`` per file. This module imports nothing of
the driver, so editing the driver keeps every cached part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from llava_ov.artifacts import digest_file, digest_json
from llava_ov.data.admission import admit
from llava_ov.data.filters import Filters
from llava_ov.data.formats import read_members, source_format
from llava_ov.data.parts import PartWriter
from llava_ov.data.validate import Rejected
from llava_ov.folder_cache import FolderCache
from llava_ov.shard_cache import ShardCache


@dataclass(frozen=True)
class PoolOptions:
    """Everything besides a source file's bytes that its conversion depends on."""

    pool: str
    source: str                        # the ``source`` of samples that do not name one: the pool folder's name
    format: str = "auto"               # a name from llava_ov.data.formats.FORMATS, or "auto" (told per file)
    dedupe: bool = False
    filters: Filters = Filters()


def shard_name(rel: str) -> str:
    """The converted shard's file stem for a source file's relative path (folders joined by ``__``)."""
    return rel.rsplit(".", 1)[0].replace("/", "__")


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
    cache: ShardCache  # its root and key: the part lives in FolderCache(root) under key(digest, rel)


@dataclass(frozen=True)
class Converted:
    part: str       # the part's folder (a cache entry)
    digest: str     # the file's content digest
    hashed: bool    # the task read the file to hash it
    converted: bool  # a cache miss: the task converted the file


def _unchanged(job: FileJob) -> None:
    st = os.stat(job.path)
    if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
        raise RuntimeError(f"{job.path} changed while ingest read it; run ingest again")


def convert_file(job: FileJob) -> Converted:
    """The engine task of one source file: its cached part, converted on a miss. A file that changes while it is
    hashed or converted stops the stage (the part would not be that of the digest it is stored under)."""
    digest = job.digest
    if digest is None:
        digest = digest_file(job.path)
        _unchanged(job)
    cache, key = FolderCache(job.cache.root), job.cache.key(digest_json([digest, job.rel]))
    part = cache.get(key)
    if part is None:
        with cache.writing(key) as folder:
            convert_source(Path(job.path), job.rel, job.opts, folder)
            _unchanged(job)
    return Converted(str(cache.entry(key)), digest, job.digest is None, part is None)
