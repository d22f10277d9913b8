"""Reading samples back out of an ``ingest`` artifact, for every stage downstream of it.

``index.parquet`` is read through pyarrow with the pool and shard predicates pushed down, one shard's rows at a
time, so no reader holds Python objects for a whole pool. Every row the index names must be found in its shard:
a missing sample is an error naming the shard and key, never a silent skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llava_ov.artifacts import Artifact, ArtifactError
from llava_ov.data.shards import read_shard, sample_images
from llava_ov.stage import contract, open_input

def open_ingest(path: Path | str | None = None) -> Artifact:
    """The ingest artifact (by default where the stage graph puts it)."""
    return open_input(path or contract("ingest").path, "ingest")


def index_table(art: Artifact, pools: Sequence[str] | None = None, columns: list[str] | None = None,
                shard: str | None = None) -> pa.Table:
    """Rows of ``index.parquet`` (of some pools / one shard), in file order, as an Arrow table."""
    filters = []
    if pools is not None:
        filters.append(("pool", "in", list(pools)))
    if shard is not None:
        filters.append(("shard", "==", shard))
    return pq.read_table(art / "index.parquet", columns=columns, filters=filters or None)


def index(art: Artifact, pools: Sequence[str] | None = None) -> list[dict]:
    """Rows of ``index.parquet`` as dicts: for small pools only (a row is a Python object)."""
    return index_table(art, pools).to_pylist()


def shards_of(art: Artifact, pools: Sequence[str]) -> list[str]:
    """The shards holding samples of ``pools``, sorted."""
    return sorted(pc.unique(index_table(art, pools, columns=["shard"])["shard"]).to_pylist())


def iter_samples(art: Artifact, pools: Sequence[str],
                 shards: Sequence[str] | None = None) -> Iterator[tuple[dict, dict, list[bytes]]]:
    """(index row, sample json, image bytes) for every kept sample of ``pools`` (optionally of some shards)."""
    for shard in shards_of(art, pools) if shards is None else sorted(shards):
        wanted = {row["key"]: row for row in index_table(art, pools, shard=shard).to_pylist()}
        found = 0
        for raw in read_shard(art.path / shard):
            row = wanted.get(raw.key)
            if row is None or raw.error:
                continue  # a sample of another pool in the same shard
            found += 1
            images = sample_images(raw.files)
            if len(images) != row["n_images"]:
                raise ArtifactError(f"{art.path / shard}: sample {raw.key} has {len(images)} image(s), the index "
                                    f"says {row['n_images']}; rebuild ingest (dvc repro ingest)")
            yield row, json.loads(raw.files["json"]), images
        if found != len(wanted):
            raise ArtifactError(f"{art.path / shard}: {len(wanted) - found} sample(s) that index.parquet lists are not "
                                f"in the shard; the artifact is damaged: rebuild ingest (dvc repro ingest)")
