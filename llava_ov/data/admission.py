"""Each sample's fate in ``ingest``, shared by the embedded build and the released-data conversion.

A sample is kept only if it validates, passes its pool's filters and (eval pool) shares neither an image nor its
id with a training pool; then duplicates are dropped (``ingest.dedupe``) or kept under an id of their own. The
:class:`Ledger` records every outcome, so the counts reconcile: in = kept + rejected, per source and per pool.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from llava_ov.artifacts import write_jsonl
from llava_ov.data.filters import Filters
from llava_ov.data.sources import POOLS
from llava_ov.data.validate import Rejected, ValidSample, check_sample

INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("pool", pa.string()), ("source", pa.string()),
                          ("category", pa.string()), ("task", pa.string()), ("shard", pa.string()),
                          ("key", pa.string()), ("n_images", pa.int32()), ("width", pa.int32()),
                          ("height", pa.int32())])


def derived_id(content_id: str, file: str, key: str) -> str:
    """The id of a later exact duplicate kept with ``ingest.dedupe: false``: xxh3-64 of (content id, file, key).

    The first occurrence (sorted file order) keeps the content id; ``file`` and ``key`` say where the copy was
    read, so the id is unique in its pool and the same on every run.
    """
    return xxhash.xxh3_64_hexdigest(f"{content_id}\0{file}\0{key}".encode())


def place(content_id: str, seen: set[str], dedupe: bool, file: str, key: str) -> str | None:
    """The id a validated sample is kept under: its content id if not in ``seen`` (ids already in its pool), else
    :func:`derived_id`, or None when ``dedupe`` drops it (the caller records :func:`duplicate`)."""
    if content_id not in seen:
        return content_id
    return None if dedupe else derived_id(content_id, file, key)


def duplicate(pool: str) -> str:
    """The rejection reason of an exact duplicate dropped by ``ingest.dedupe``."""
    return f"duplicate sample_id in pool {pool}"


def image_hashes(images: Iterable[bytes]) -> np.ndarray:
    return np.fromiter((xxhash.xxh3_64_intdigest(img) for img in images), dtype=np.uint64)


def _sorted_unique(chunks: list[np.ndarray]) -> np.ndarray:
    return np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.uint64)


def _contains(table: np.ndarray, values: np.ndarray) -> bool:
    at = np.searchsorted(table, values)
    return bool(np.any(table[np.minimum(at, len(table) - 1)] == values)) if len(table) and len(values) else False


@dataclass
class TrainingSet:
    """Image digests and sample ids of the training pools, as sorted uint64 arrays (8 bytes per entry, no
    per-sample Python objects), to keep the eval pool disjoint from them. Picklable: it can go to workers."""

    images: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    @classmethod
    def of(cls, images: list[np.ndarray], ids: list[np.ndarray]) -> "TrainingSet":
        return cls(_sorted_unique(images), _sorted_unique(ids))

    def check(self, sample: ValidSample) -> None:
        if _contains(self.images, image_hashes(sample.images)):
            raise Rejected("eval image also in a training pool")
        if _contains(self.ids, np.array([int(sample.sample_id, 16)], dtype=np.uint64)):
            raise Rejected("eval sample also in a training pool")


def admit(meta: dict, members: dict[str, bytes], filters: Filters, training: TrainingSet | None) -> ValidSample:
    """Validate a sample, apply its pool's filters and (eval) the training-overlap check; raise :class:`Rejected`
    (with the sample's id once it has one)."""
    sample = check_sample(meta, members)
    try:
        filters.check(sample)
        if training is not None:
            training.check(sample)
    except Rejected as e:
        e.sample_id = sample.sample_id
        raise
    return sample


def index_row(sample: ValidSample, sid: str, pool: str, source: str, shard: str) -> dict:
    """The ``index.parquet`` row of a kept sample (its key in ``shard`` is its id)."""
    w, h = sample.sizes[0] if sample.sizes else (0, 0)
    return {"sample_id": sid, "pool": pool, "source": source, "category": str(sample.meta.get("category", "")),
            "task": str(sample.meta.get("task", "")), "shard": shard, "key": sid, "n_images": len(sample.images),
            "width": w, "height": h}


@dataclass
class Ledger:
    """Every sample seen, kept or rejected, with per-source and per-pool counts that must reconcile."""

    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    ids: dict[str, set[str]] = field(default_factory=lambda: {pool: set() for pool in POOLS})
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    pool_kept: Counter = field(default_factory=Counter)
    pool_rejected: Counter = field(default_factory=Counter)

    @property
    def seen(self) -> int:
        return len(self.rows) + len(self.rejects)

    def keep(self, row: dict) -> None:
        self.ids[row["pool"]].add(row["sample_id"])
        self.kept[row["source"]] += 1
        self.pool_kept[row["pool"]] += 1
        self.rows.append(row)

    def reject(self, sid: str, pool: str, source: str, reason: str, where: str = "") -> None:
        self.rejected[source] += 1
        self.pool_rejected[pool] += 1
        self.rejects.append({"sample_id": sid, "source": source, "reason": reason,
                             **({"where": where} if where else {})})

    def training_set(self, images: list[np.ndarray]) -> TrainingSet:
        """The training pools' ids (kept so far) and the given image digests, for checking the eval pool."""
        ids = [np.fromiter((int(s, 16) for s in self.ids[p]), dtype=np.uint64) for p in POOLS if p != "eval"]
        return TrainingSet.of(images, ids)

    def write(self, out: Path, seconds: float) -> dict:
        """Write index.parquet and rejects.jsonl; return the metrics (asserting in = kept + rejected)."""
        assert sum(self.kept.values()) == sum(self.pool_kept.values()) == len(self.rows)
        assert sum(self.rejected.values()) == sum(self.pool_rejected.values()) == len(self.rejects)
        pq.write_table(pa.Table.from_pylist(self.rows, schema=INDEX_SCHEMA), out / "index.parquet",
                       compression="zstd")
        write_jsonl(out / "rejects.jsonl", self.rejects)
        sources = sorted(set(self.kept) | set(self.rejected))
        pools = [p for p in POOLS if self.pool_kept[p] or self.pool_rejected[p]]
        return {
            "sources": {s: {"samples": self.kept[s] + self.rejected[s], "kept": self.kept[s],
                            "rejected": self.rejected[s]} for s in sources},
            "pools": {p: self.pool_kept[p] for p in POOLS if self.pool_kept[p]},
            "pool_counts": {p: {"samples": self.pool_kept[p] + self.pool_rejected[p], "kept": self.pool_kept[p],
                                "rejected": self.pool_rejected[p]} for p in pools},
            "total": self.seen, "kept": len(self.rows), "rejected": len(self.rejects),
            "reject_reasons": dict(sorted(Counter(r["reason"].split(" (")[0] for r in self.rejects).items())),
            "seconds": round(seconds, 2),
        }
