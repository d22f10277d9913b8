"""Reading samples back out of an ``ingest`` artifact, for every stage downstream of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from llava_ov.artifacts import Artifact, open_artifact
from llava_ov.data.shards import read_shard

KIND, SCHEMA = "ingest", 1


def open_ingest(path: Path | str = "artifacts/ingest") -> Artifact:
    return open_artifact(path, KIND, SCHEMA)


def index(art: Artifact, pools: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of ``index.parquet`` (optionally only some pools), in file order."""
    rows = pq.read_table(art / "index.parquet").to_pylist()
    return [r for r in rows if pools is None or r["pool"] in pools]


def iter_samples(art: Artifact, pools: tuple[str, ...],
                 shards: tuple[str, ...] | None = None) -> Iterator[tuple[dict, dict, list[bytes]]]:
    """(index row, sample json, image bytes) for every kept sample of ``pools`` (optionally of some shards)."""
    by_shard: dict[str, dict[str, dict]] = {}
    for row in index(art, pools):
        if shards is not None and row["shard"] not in shards:
            continue
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    for shard in sorted(by_shard):
        wanted = by_shard[shard]
        for raw in read_shard(art.path / shard):
            row = wanted.get(raw.key)
            if row is None or raw.error:
                continue  # not a kept sample of these pools (rejected at ingest, or another pool)
            images = [raw.files[f"{i}.{ext}"] for i in range(row["n_images"])
                      for ext in ("png", "jpg", "jpeg", "webp") if f"{i}.{ext}" in raw.files]
            yield row, json.loads(raw.files["json"]), images
