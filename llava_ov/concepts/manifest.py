"""``balance``'s columns in and manifest out, streamed through Arrow.

The concept index of 85M images is read as three compact columns (top-k ids int32, a source code, ``id_hash``
uint64: 29 bytes per image for k = 5), never as Python lists; the manifest is written row group by row group, its
string columns passed through from the index without becoming Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROW_GROUP = 1 << 20
MANIFEST_SCHEMA = pa.schema([("sample_id", pa.string()), ("source", pa.string()), ("shard", pa.string()),
                             ("key", pa.string()), ("concepts", pa.list_(pa.int32())), ("weight", pa.float64()),
                             ("selected", pa.bool_())])


@dataclass
class SourceMix:
    """Each image's ``balance.mix`` weight as a source code per image and a weight per source: sliced a chunk of
    rows at a time (:class:`llava_ov.concepts.balance.Mix`), never a float64 column of 85M rows."""

    source: np.ndarray  # int32 [N]
    weights: np.ndarray  # float64 [sources]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.weights[self.source[rows]]

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class PoolColumns:
    topk: np.ndarray  # int32 [N, k], best first
    source: np.ndarray  # int32 [N], index into ``sources``
    sources: list[str]
    id_hash: np.ndarray  # uint64 [N]

    def mix(self, weights: dict[str, float]) -> SourceMix:
        """Each image's source weight (``balance.mix``), refusing a source the mix does not name."""
        unknown = sorted(set(self.sources) - set(weights))
        if unknown:
            raise ValueError(f"params.yaml balance.mix has no weight for source(s) {unknown}")
        return SourceMix(self.source, np.array([float(weights[s]) for s in self.sources], dtype=np.float64))


def read_pool(index: Path) -> PoolColumns:
    """The columns balancing needs from concept_index's ``index.parquet``, in its row order."""
    f = pq.ParquetFile(index)
    n = f.metadata.num_rows
    topk, codes, id_hash = None, np.empty(n, np.int32), np.empty(n, np.uint64)
    sources: dict[str, int] = {}
    row = 0
    for batch in f.iter_batches(batch_size=ROW_GROUP, columns=["concepts", "source", "id_hash"]):
        m = len(batch)
        values = batch.column("concepts").flatten().to_numpy()
        if topk is None:
            topk = np.empty((n, len(values) // max(m, 1)), np.int32)
        topk[row:row + m] = values.reshape(m, -1)
        encoded = pc.dictionary_encode(batch.column("source"))
        local = np.array([sources.setdefault(s, len(sources)) for s in encoded.dictionary.to_pylist()], np.int32)
        codes[row:row + m] = local[encoded.indices.to_numpy()]
        id_hash[row:row + m] = batch.column("id_hash").to_numpy()
        row += m
    return PoolColumns(topk if topk is not None else np.empty((0, 0), np.int32), codes, list(sources), id_hash)


def write_manifest(index: Path, out: Path, weight: np.ndarray, selected: np.ndarray) -> None:
    """``manifest.parquet``: the index's rows in order, with each image's weight and selection."""
    row = 0
    with pq.ParquetWriter(out, MANIFEST_SCHEMA, compression="zstd") as writer:
        for batch in pq.ParquetFile(index).iter_batches(batch_size=ROW_GROUP,
                                                        columns=["sample_id", "source", "shard", "key", "concepts"]):
            m = len(batch)
            writer.write_table(pa.Table.from_batches([batch]).append_column("weight", pa.array(weight[row:row + m]))
                               .append_column("selected", pa.array(selected[row:row + m])).cast(MANIFEST_SCHEMA))
            row += m
