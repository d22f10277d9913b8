"""One engine task's output in ``ingest``: a *part*, the samples of one source file (released) or of one embedded
source, converted and written as a folder from which the driver assembles the artifact without ever holding a
Python object per sample.

Per pool it holds:

- its shards, at the paths they take in the artifact (``<pool>/<name>.tar``; the driver hard-links them there);
- ``<pool>.parquet``: the ``index.parquet`` rows of its kept samples plus ``origin``, each sample's key in its
  source (what a later duplicate's :func:`~llava_ov.data.admission.derived_id` needs);
- ``<pool>.npz``: uint64 arrays, per kept row its ``content`` id and its ``ids`` (they differ for a duplicate kept
  under a derived id), and the digests of its ``images`` in row order: all the pool-level steps read;
- ``<pool>.rejects.jsonl``: its rejections, one line each, as ``rejects.jsonl`` holds them;

and ``summary.json``: per pool its shards and its counts per source and per reason. Duplicates within the part are
settled here (:func:`~llava_ov.data.admission.place`: the first keeps the content id); across parts and eval vs
training, by the driver (:mod:`llava_ov.data.assemble`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llava_ov.artifacts import write_json
from llava_ov.data.admission import INDEX_SCHEMA, duplicate, image_hashes, index_row, place, reason_kind
from llava_ov.data.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter, encode_meta
from llava_ov.data.validate import ValidSample

PART_SCHEMA = INDEX_SCHEMA.append(pa.field("origin", pa.string()))
SUMMARY = "summary.json"


def reject_line(sid: str, source: str, reason: str, where: str = "") -> bytes:
    """One line of ``rejects.jsonl`` (sorted keys: the same rejection, the same bytes)."""
    row = {"sample_id": sid, "source": source, "reason": reason, **({"where": where} if where else {})}
    return (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass
class _PoolPart:
    """What a part accumulates for one pool (one source file's worth: bounded by the file, not the pool)."""

    shards: ShardWriter
    rejects: IO[bytes]
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in PART_SCHEMA.names})
    content: list[int] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)


class PartWriter:
    """Writes one part into ``folder``: kept samples into its shards (``<pool>/<prefix>.tar``, or numbered
    ``<prefix>-NNNNNN.tar`` up to ``max_bytes`` each), rows, arrays and rejections per pool.

    ``file`` names the source in a duplicate's derived id; ``located`` adds ``where`` (``<file>:<key>``) to each
    rejection (released files, whose keys mean something to their owner).
    """

    def __init__(self, folder: Path, file: str, prefix: str, dedupe: bool, located: bool, numbered: bool = False,
                 max_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.folder, self.file, self.prefix, self.dedupe, self.located = folder, file, prefix, dedupe, located
        self.numbered, self.max_bytes = numbered, max_bytes
        self._pools: dict[str, _PoolPart] = {}

    def _pool(self, pool: str) -> _PoolPart:
        if pool not in self._pools:
            writer = ShardWriter(self.folder / pool, self.prefix, self.max_bytes, numbered=self.numbered)
            self._pools[pool] = _PoolPart(writer, open(self.folder / f"{pool}.rejects.jsonl", "wb"))
        return self._pools[pool]

    def where(self, key: str) -> str:
        return f"{self.file}:{key}" if self.located else ""

    def keep(self, pool: str, sample: ValidSample, source: str, key: str, meta: dict,
             images: dict[str, bytes]) -> None:
        """Write a validated sample under its :func:`~llava_ov.data.admission.place`\\ d id (``meta`` gets it as
        ``id``), or reject it as a duplicate of an earlier sample of this part."""
        p, content = self._pool(pool), sample.sample_id
        sid = place(content, p.seen, self.dedupe, self.file, key)
        if sid is None:
            self.reject(pool, content, source, duplicate(pool), key)
            return
        p.seen.add(content)
        written = p.shards.write(sid, {"json": encode_meta({**meta, "id": sid}), **images})
        row = index_row(sample, sid, pool, source, f"{pool}/{written.shard}", written.offset, written.size)
        for name, value in {**row, "origin": key}.items():
            p.columns[name].append(value)
        p.content.append(int(content, 16))
        p.images.append(image_hashes(sample.images))
        p.kept[source] += 1

    def reject(self, pool: str, sid: str, source: str, reason: str, key: str) -> None:
        p = self._pool(pool)
        p.rejects.write(reject_line(sid, source, reason, self.where(key)))
        p.rejected[source] += 1
        p.reasons[reason_kind(reason)] += 1

    def close(self, **extra: Any) -> dict:
        """Write every pool's rows, arrays and ``summary.json`` (with ``extra``, e.g. the source's format)."""
        pools = {}
        for pool, p in sorted(self._pools.items()):
            p.shards.close()
            p.rejects.close()
            pq.write_table(pa.table(p.columns, schema=PART_SCHEMA), self.folder / f"{pool}.parquet",
                           compression="zstd")
            ids = np.array([int(s, 16) for s in p.columns["sample_id"]], dtype=np.uint64)
            np.savez(self.folder / f"{pool}.npz", content=np.array(p.content, dtype=np.uint64), ids=ids,
                     images=np.concatenate(p.images) if p.images else image_hashes([]))
            pools[pool] = {"shards": [f"{pool}/{s.name}" for s in p.shards.shards],
                           "kept": sum(p.kept.values()), "rejected": sum(p.rejected.values()),
                           "sources": {s: [p.kept[s], p.rejected[s]] for s in sorted(set(p.kept) | set(p.rejected))},
                           "reasons": dict(sorted(p.reasons.items()))}
        summary = {"file": self.file, "located": self.located, "pools": pools, **extra}
        write_json(self.folder / SUMMARY, summary)
        return summary


@dataclass(frozen=True)
class Part:
    """A written part, for the driver: its summary, and per pool its rows, arrays, rejections and shards."""

    folder: Path
    summary: dict

    @classmethod
    def open(cls, folder: Path | str) -> "Part":
        folder = Path(folder)
        return cls(folder, json.loads((folder / SUMMARY).read_text()))

    @property
    def pools(self) -> dict[str, dict]:
        return self.summary["pools"]

    def table(self, pool: str) -> pa.Table:
        return pq.read_table(self.folder / f"{pool}.parquet", schema=PART_SCHEMA)

    def arrays(self, pool: str) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{pool}.npz") as data:
            return {name: data[name] for name in data.files}

    def rejects(self, pool: str) -> Path:
        return self.folder / f"{pool}.rejects.jsonl"
