"""The driver's half of ``ingest``: settle what needs a whole pool, then stream the parts into the artifact.

Parts (:mod:`llava_ov.data.parts`) come in sorted order (released: pools in ``POOLS`` order, files by path;
embedded: sources by name), which is what "earlier" means below. The driver keeps counters and uint64 arrays, never
a Python object per sample (except for the eval pool, which is small); its peak is about 8 bytes per sample of the
largest pool, during step 1:

1. Duplicates across parts: a sample kept under its content id although that content came in an earlier part of
   its pool is dropped (``ingest.dedupe``) or takes its :func:`~llava_ov.data.admission.derived_id`. One sort of
   the pool's content ids finds the repeated ones; only their rows are looked at.
2. Eval vs training: an eval sample sharing an image digest or its content id with a kept training sample is
   rejected, whatever else befell it (a duplicate of it is relabelled with the same reason). The training parts'
   arrays stream past the sorted eval set one part at a time.
3. Streaming: per pool and part, its shards are hard-linked into the artifact (copied where links fail), its rows
   appended to ``index.parquet`` (:class:`IndexWriter`) and its rejections to ``rejects.jsonl``. A part that 1 or
   2 changed has the affected shards rewritten (rare).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llava_ov.data.admission import (EVAL_IMAGE_IN_TRAINING, EVAL_SAMPLE_IN_TRAINING, INDEX_SCHEMA, PUSHED_DOWN,
                                     derived_id, duplicate, reason_kind)
from llava_ov.data.parts import Part, reject_line
from llava_ov.data.shards import ShardWriter, encode_meta, read_shard
from llava_ov.data.sources import POOLS

Fate = tuple[str | None, str]  # a kept row's new id (None: dropped) and, when dropped, the reason
_EVAL = "eval"
UNIQUE = ("sample_id", "key", "offset")  # a value per row: dictionary-encoding them only costs memory and time


def _in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which ``values`` are in the sorted array ``table`` (memory O(len(values)))."""
    if not len(table):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return table[at] == values


def _hex(value: int) -> str:
    return f"{value:016x}"


def _holders(parts: list[Part], pool: str) -> list[int]:
    return [i for i, part in enumerate(parts) if pool in part.pools]


def _repeated_content(parts: list[Part], holders: list[int], pool: str) -> np.ndarray:
    """Sorted content ids kept under their own id by more than one part: 8 bytes per sample, one sort."""
    ids = np.empty(sum(parts[i].pools[pool]["kept"] for i in holders), dtype=np.uint64)
    n = 0
    for i in holders:
        a = parts[i].arrays(pool)
        own = a["content"][a["ids"] == a["content"]]
        ids[n:n + len(own)] = own
        n += len(own)
    ids = ids[:n]
    ids.sort()
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def cross_part_duplicates(parts: list[Part], pool: str, dedupe: bool) -> dict[int, dict[int, Fate]]:
    """Step 1 for one pool: part index -> row -> fate of each sample whose content came in an earlier part."""
    holders = _holders(parts, pool)
    repeated = _repeated_content(parts, holders, pool) if len(holders) > 1 else np.zeros(0, np.uint64)
    fates: dict[int, dict[int, Fate]] = {}
    seen: set[int] = set()
    for i in holders if len(repeated) else []:
        a = parts[i].arrays(pool)
        rows = np.flatnonzero((a["ids"] == a["content"]) & _in_sorted(a["content"], repeated))
        later = [r for r in rows.tolist() if int(a["content"][r]) in seen]
        seen.update(a["content"][rows].tolist())
        if later:
            origins = parts[i].table(pool).column("origin")
            fates[i] = {r: (None, duplicate(pool)) if dedupe else
                        (derived_id(_hex(int(a["content"][r])), parts[i].summary["file"], origins[r].as_py()), "")
                        for r in later}
    return fates


def _final_ids(a: dict[str, np.ndarray], fates: dict[int, Fate]) -> np.ndarray:
    """The ids a part's rows end up with after ``fates`` (dropped rows left out)."""
    if not fates:
        return a["ids"]
    ids, keep = a["ids"].copy(), np.ones(len(a["ids"]), dtype=bool)
    for r, (new, _) in fates.items():
        if new is None:
            keep[r] = False
        else:
            ids[r] = int(new, 16)
    return ids[keep]


def eval_overlaps(parts: list[Part], fates: dict[tuple[int, str], dict[int, Fate]]) -> dict[int, str]:
    """Step 2: eval content id -> the reason it must go, for every eval sample overlapping a training pool."""
    evals = [(i, parts[i].arrays(_EVAL), parts[i].table(_EVAL).column("n_images").to_numpy())
             for i in _holders(parts, _EVAL)]
    if not evals:
        return {}
    eval_images = np.unique(np.concatenate([a["images"] for _, a, _ in evals]))
    eval_ids = np.unique(np.concatenate([a["content"] for _, a, _ in evals]))
    hit_images: set[int] = set()
    hit_ids: set[int] = set()
    training = [(i, pool) for pool in POOLS if pool != _EVAL for i in _holders(parts, pool)]
    for i, pool in tqdm(training, desc="ingest: eval vs training", unit="part", mininterval=1.0):
        a = parts[i].arrays(pool)
        hit_images.update(a["images"][_in_sorted(a["images"], eval_images)].tolist())
        ids = _final_ids(a, fates.get((i, pool), {}))
        hit_ids.update(ids[_in_sorted(ids, eval_ids)].tolist())
    reasons: dict[int, str] = {}
    for _, a, n_images in evals:  # the eval pool is small: per-sample Python is fine here
        for content, images in zip(a["content"].tolist(), np.split(a["images"], np.cumsum(n_images)[:-1])):
            if hit_images.intersection(images.tolist()):
                reasons[content] = EVAL_IMAGE_IN_TRAINING
            elif content in hit_ids:
                reasons.setdefault(content, EVAL_SAMPLE_IN_TRAINING)
    return reasons


def settle(parts: list[Part], dedupe: bool) -> tuple[dict[tuple[int, str], dict[int, Fate]], dict[int, str]]:
    """Steps 1 and 2: (part index, pool) -> row -> fate, and the eval overlap reasons by content id."""
    fates = {(i, pool): rows for pool in POOLS for i, rows in cross_part_duplicates(parts, pool, dedupe).items()}
    overlaps = eval_overlaps(parts, fates)
    for i in _holders(parts, _EVAL) if overlaps else []:
        content = parts[i].arrays(_EVAL)["content"].tolist()
        rows = {r: (None, overlaps[c]) for r, c in enumerate(content) if c in overlaps}
        if rows:
            fates[(i, _EVAL)] = {**fates.get((i, _EVAL), {}), **rows}
    return fates, overlaps


@dataclass
class Tally:
    """Counts per source, per pool and per reason; in = kept + rejected must hold for what was written."""

    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    pool_kept: Counter = field(default_factory=Counter)
    pool_rejected: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    def add(self, pool: str, summary: dict) -> None:
        for source, (kept, rejected) in summary["sources"].items():
            self.kept[source] += kept
            self.rejected[source] += rejected
        self.pool_kept[pool] += summary["kept"]
        self.pool_rejected[pool] += summary["rejected"]
        self.reasons.update(summary["reasons"])

    def drop(self, pool: str, source: str, reason: str) -> None:
        self.kept[source] -= 1
        self.rejected[source] += 1
        self.pool_kept[pool] -= 1
        self.pool_rejected[pool] += 1
        self.reasons[reason_kind(reason)] += 1

    def relabel(self, old: str, new: str) -> None:
        self.reasons[reason_kind(old)] -= 1
        self.reasons[reason_kind(new)] += 1

    def metrics(self, rows: int, rejects: int) -> dict:
        kept, rejected = sum(self.pool_kept.values()), sum(self.pool_rejected.values())
        if (kept, rejected) != (rows, rejects) or (kept, rejected) != (sum(self.kept.values()),
                                                                         sum(self.rejected.values())):
            raise RuntimeError(f"ingest counts do not reconcile: {rows} rows and {rejects} rejections written, "
                               f"counted {kept} kept and {rejected} rejected")
        sources = sorted(set(self.kept) | set(self.rejected))
        pools = [p for p in POOLS if self.pool_kept[p] or self.pool_rejected[p]]
        return {
            "sources": {s: {"samples": self.kept[s] + self.rejected[s], "kept": self.kept[s],
                            "rejected": self.rejected[s]} for s in sources},
            "pools": {p: self.pool_kept[p] for p in POOLS if self.pool_kept[p]},
            "pool_counts": {p: {"samples": self.pool_kept[p] + self.pool_rejected[p], "kept": self.pool_kept[p],
                                "rejected": self.pool_rejected[p]} for p in pools},
            "total": kept + rejected, "kept": kept, "rejected": rejected,
            "reject_reasons": dict(sorted((+self.reasons).items())),
        }


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no bytes copied; both are only ever replaced, never written in place), or copy
    it where the filesystem cannot link (another device, no hard links)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def rewrite_shard(src: Path, dst: Path, renames: dict[str, str | None]) -> dict[str, tuple[int, int]]:
    """Copy a shard with samples renamed (json ``id`` too) or dropped (``None``); returns the new byte extents by
    key. Nothing is written when every sample is dropped."""
    extents = {}
    with ShardWriter(dst.parent, dst.name.removesuffix(".tar"), numbered=False) as writer:
        for raw in read_shard(src):
            new = renames.get(raw.key, raw.key)
            if new is None:
                continue
            files = dict(raw.files)
            if new != raw.key:
                files["json"] = encode_meta({**json.loads(files["json"]), "id": new})
            written = writer.write(new, files)
            extents[new] = (written.offset, written.size)
    return extents


def _changed_rows(part: Part, pool: str, table: pa.Table, fates: dict[int, Fate], out: Path,
                  tally: Tally) -> tuple[pa.Table, list[str], list[bytes]]:
    """Apply ``fates`` to one part's pool: rewrite its affected shards into ``out``, link the others; returns the
    rows, the shards and the new rejection lines."""
    content = part.arrays(pool)["content"]
    rows, renames, lines = [], {}, []
    for r, row in enumerate(table.to_pylist()):
        new, reason = fates.get(r, (row["sample_id"], ""))
        if new != row["sample_id"]:
            renames.setdefault(row["shard"], {})[row["key"]] = new
        if new is None:
            where = f"{part.summary['file']}:{row['origin']}" if part.summary["located"] else ""
            lines.append(reject_line(_hex(int(content[r])), row["source"], reason, where))
            tally.drop(pool, row["source"], reason)
        else:
            rows.append({**row, "sample_id": new, "key": new})
    shards, extents = [], {}
    for shard in part.pools[pool]["shards"]:
        if shard in renames:
            moved = rewrite_shard(part.folder / shard, out / shard, renames[shard])
            extents.update({(shard, key): extent for key, extent in moved.items()})
            if moved:
                shards.append(shard)
        else:
            link_or_copy(part.folder / shard, out / shard)
            shards.append(shard)
    for row in rows:
        row["offset"], row["size"] = extents.get((row["shard"], row["key"]), (row["offset"], row["size"]))
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), shards, lines


def _copy_rejects(part: Part, pool: str, overlaps: dict[int, str], sink, tally: Tally) -> int:
    """Append a part's rejections to ``sink``; an eval duplicate of an overlapping sample takes the overlap reason.
    Returns the number of lines."""
    n = 0
    with open(part.rejects(pool), "rb") as f:
        if pool != _EVAL or not overlaps:
            while chunk := f.read(1 << 22):
                sink.write(chunk)
                n += chunk.count(b"\n")
            return n
        for line in f:
            row = json.loads(line)
            if row["reason"] == duplicate(pool) and int(row["sample_id"], 16) in overlaps:
                tally.relabel(row["reason"], overlaps[int(row["sample_id"], 16)])
                line = reject_line(row["sample_id"], row["source"], overlaps[int(row["sample_id"], 16)],
                                   row.get("where", ""))
            sink.write(line)
            n += 1
    return n


@dataclass
class Assembled:
    """The artifact's counts (``metrics``) and, per part and pool, what ended in it (kept, rejected, shards)."""

    metrics: dict
    outcomes: list[dict[str, dict]]


class IndexWriter:
    """``index.parquet``, streamed: consecutive parts of one pool share a row group until it holds ``rows_per_group``
    rows. Row groups never mix pools, and shards come in sorted order within a pool, so readers' pool and shard
    predicates skip most of them; statistics are written only for those columns, since each statistic is a footer
    entry per row group that every read parses. Memory: one row group's rows."""

    def __init__(self, path: Path, rows_per_group: int = 1 << 16) -> None:
        self._writer = pq.ParquetWriter(path, INDEX_SCHEMA, compression="zstd", write_statistics=list(PUSHED_DOWN),
                                        use_dictionary=[n for n in INDEX_SCHEMA.names if n not in UNIQUE])
        self._rows_per_group = rows_per_group
        self._pending: list[pa.Table] = []
        self._pool: str | None = None
        self.rows = 0

    def write(self, pool: str, table: pa.Table) -> None:
        if pool != self._pool:
            self.flush()
            self._pool = pool
        self._pending.append(table)
        if sum(t.num_rows for t in self._pending) >= self._rows_per_group:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self.rows += table.num_rows
            self._pending = []

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        self._writer.close()


def assemble(parts: list[Part], out: Path, dedupe: bool) -> Assembled:
    """Settle the pool-level steps and write ``index.parquet``, ``rejects.jsonl`` and the shards into ``out``."""
    fates, overlaps = settle(parts, dedupe)
    tally = Tally()
    outcomes: list[dict[str, dict]] = [{} for _ in parts]
    n_rejects = 0
    with IndexWriter(out / "index.parquet") as index, open(out / "rejects.jsonl", "wb") as rejects:
        order = [(pool, i) for pool in POOLS for i in _holders(parts, pool)]
        for pool, i in tqdm(order, desc="ingest: assemble", unit="part", mininterval=1.0):
            part, summary = parts[i], parts[i].pools[pool]
            tally.add(pool, summary)
            table = part.table(pool)
            if (i, pool) in fates:
                table, shards, lines = _changed_rows(part, pool, table, fates[(i, pool)], out, tally)
            else:
                for shard in summary["shards"]:
                    link_or_copy(part.folder / shard, out / shard)
                table, shards, lines = table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA), summary["shards"], []
            index.write(pool, table)
            n_rejects += _copy_rejects(part, pool, overlaps, rejects, tally)
            rejects.writelines(lines)
            n_rejects += len(lines)
            outcomes[i][pool] = {"kept": table.num_rows, "rejected": summary["rejected"] + len(lines),
                                 "shards": shards}
    return Assembled(tally.metrics(index.rows, n_rejects), outcomes)
