"""The driver's half of ``ingest``: run the part tasks, settle the pool-level steps (:mod:`llava_ov.data.settle`),
stream the parts into the artifact.

Per pool and part, in sorted order, its shards are hard-linked into the artifact (copied where links fail), its
rows appended to ``index.parquet`` (:class:`IndexWriter`) and its rejections to ``rejects.jsonl``; a part whose
rows the pool-level steps changed has the affected shards rewritten (rare). The driver holds counters, one row
group's rows and the settle step's arrays, never a Python object per sample.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llava_ov.data.admission import INDEX_SCHEMA, PUSHED_DOWN, duplicate, reason_kind
from llava_ov.data.parts import Part, reject_line
from llava_ov.data.settle import EVAL, Fate, hex_id, holders, settle
from llava_ov.data.shards import ShardWriter, encode_meta, read_shard
from llava_ov.data.sources import POOLS
from llava_ov.engine import Engine
from llava_ov.file_cache import link_or_copy

LOCAL = Engine(executor="local")  # library calls run in-process unless given an engine: only stages start Ray
J = TypeVar("J")
UNIQUE = ("sample_id", "key", "offset")  # (nearly) a value per row: a dictionary only costs memory and time


def map_largest_first(engine: Engine, fn: Callable[[J], Any], jobs: Sequence[J], costs: Sequence[float],
                      desc: str) -> list:
    """``engine.map(fn, jobs)`` with the costliest jobs started first (a large one started last would run alone at
    the end), results in the order of ``jobs``."""
    order = sorted(range(len(jobs)), key=lambda i: (-costs[i], i))
    results: list = [None] * len(jobs)
    for i, result in zip(order, engine.map(fn, [jobs[i] for i in order], desc=desc)):
        results[i] = result
    return results


@contextmanager
def cache_or_scratch(cache: Path | None, out: Path) -> Iterator[Path]:
    """``cache`` (kept across runs), or the scratch folder ``out/.parts``, removed afterwards.

    Inside ``out``: on the same filesystem, so parts hard-link into the artifact; shared with the workers wherever
    ``out`` is; and, ``out`` being the artifact writer's temporary folder, removed with it by the next run when the
    stage is killed (``kill -9`` runs no clean-up; a folder beside it would stay forever)."""
    if cache is not None:
        yield Path(cache).resolve()
        return
    scratch = (Path(out) / ".parts").resolve()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)  # the stage's own error is the one to report
        raise
    shutil.rmtree(scratch)


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
            lines.append(reject_line(hex_id(int(content[r])), row["source"], reason, where))
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
        if pool != EVAL or not overlaps:
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
        order = [(pool, i) for pool in POOLS for i in holders(parts, pool)]
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
