"""Streaming access to an ingest pool for the concept stages, sized for the 85M-sample pool.

``llava_ov.data.reader.index`` turns every index row into a Python dict, fine for the default's 23K rows and tens
of GB at 85M. Here the index is read as Arrow record batches of a few columns, or one shard's rows at a time
(row groups the shard is not in are skipped by their statistics), and a shard's samples are read one by one,
so a stage holds a batch, a shard's rows or compact columns, never the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llava_ov.data.shards import read_shard

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # the order ``llava_ov.data.reader`` looks for image 0


def pool_batches(index: Path, pools: tuple[str, ...], columns: list[str],
                 batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
    """The rows of ``pools`` in file order, ``batch_rows`` at a time, only ``columns`` (plus ``pool``) read."""
    wanted = pa.array(list(pools))
    for batch in pq.ParquetFile(index).iter_batches(batch_size=batch_rows, columns=sorted({*columns, "pool"})):
        yield batch.filter(pc.is_in(batch.column("pool"), value_set=wanted))


def pool_shards(index: Path, pools: tuple[str, ...]) -> list[str]:
    """Sorted distinct shards (paths relative to the ingest artifact) that hold samples of ``pools``."""
    shards: set[str] = set()
    for batch in pool_batches(index, pools, ["shard"]):
        shards.update(pc.unique(batch.column("shard")).to_pylist())
    return sorted(shards)


def shard_rows(index: Path, pools: tuple[str, ...], shard: str, columns: list[str]) -> pa.Table:
    """The index rows of one shard that belong to ``pools``, in file order."""
    return pq.read_table(index, columns=columns, filters=[("pool", "in", list(pools)), ("shard", "==", shard)])


def shard_samples(path: Path | str, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of the wanted samples of a shard, in file order (others, and rejected ones, skipped)."""
    for raw in read_shard(path):
        if raw.key in keys and raw.error is None:
            yield raw.key, raw.files


def first_image(files: dict[str, bytes]) -> bytes | None:
    """Image 0 of a sample's members, or None if it has none."""
    return next((files[f"0.{ext}"] for ext in IMAGE_EXTS if f"0.{ext}" in files), None)
