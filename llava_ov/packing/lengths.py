"""Exact lengths of every training sample, computed by the code the loader runs.

For each sample: text tokens, image tokens (one ``<|image_pad|>`` per merged patch, from the image size under the
resize rule, without decoding pixels), ViT patches and the total, all through :class:`ChatEncoder` — so a plan
made from these lengths is exactly what the loader will produce.

The work is one task per ingest shard on the engine (:mod:`llava_ov.engine`), each reading its shard once,
sequentially, and caching its result as a parquet file keyed by the shard's content, the tokenizer, the image
params and this code: every sample of the shard is measured, so a new concept-balanced selection of ``mid`` (a
``balance`` change) is a filter over cached results and recomputes nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from transformers import AutoTokenizer

from llava_ov.artifacts import Artifact
from llava_ov.data.reader import index_table
from llava_ov.data.shards import read_shard, sample_images
from llava_ov.code_digest import code_digest
from llava_ov.shard_cache import ShardCache
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor


# `offset`/`size`: the sample's byte extent in its ingest shard, so packing seeks it without a scan;
# `n_images`/`image_bytes`: what its images add to a packed shard (shards are sized in bytes)
SCHEMA = pa.schema([("sample_id", pa.string()), ("pool", pa.string()), ("source", pa.string()),
                    ("shard", pa.string()), ("key", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                    ("n_images", pa.int32()), ("image_bytes", pa.int64()), ("text_tokens", pa.int32()),
                    ("image_tokens", pa.int32()), ("vit_patches", pa.int32()), ("total", pa.int32())])


def encode_sample(encoder: ChatEncoder, processor: ImageProcessor, messages: list[dict],
                  images: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Token ids, loss mask and image grids of one sample (image headers only: the size is all it needs)."""
    grids = []
    for data in images:
        with Image.open(io.BytesIO(data)) as img:
            grids.append(processor.grid(img.width, img.height))
    ids, mask = encoder.encode(messages, [processor.num_image_tokens(g) for g in grids])
    return ids, mask, grids


def sample_lengths(encoder: ChatEncoder, processor: ImageProcessor, messages: list[dict],
                   images: list[bytes]) -> dict[str, int]:
    ids, _, grids = encode_sample(encoder, processor, messages, images)
    image_tokens = sum(processor.num_image_tokens(g) for g in grids)
    return {"text_tokens": len(ids) - image_tokens, "image_tokens": image_tokens,
            "vit_patches": sum(t * h * w for t, h, w in grids), "total": len(ids)}


@dataclass(frozen=True)
class ShardJob:
    """One ingest shard to measure: where it is, what it is, and where its result is cached."""

    path: str  # absolute: a worker on another node shares the filesystem, not the working directory
    rel: str  # the shard's path inside the ingest artifact (index.parquet's `shard`)
    pool: str
    digest: str  # the shard's content digest (the ingest artifact's file_digests)
    tokenizer: str
    image: dict
    cache: ShardCache


@lru_cache(maxsize=2)
def _encoder(tokenizer_path: str) -> ChatEncoder:
    return ChatEncoder(AutoTokenizer.from_pretrained(tokenizer_path))


def shard_lengths(job: ShardJob) -> str:
    """Lengths of every sample of one ingest shard, as a parquet file in the cache (computed on a miss)."""
    cached = job.cache.get(job.digest)
    if cached is not None:
        return str(cached)
    encoder, processor = _encoder(job.tokenizer), ImageProcessor(**job.image)
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for raw in read_shard(job.path):
        meta = json.loads(raw.files["json"])
        images = sample_images(raw.files)
        row = {"sample_id": meta["id"], "pool": job.pool, "source": meta["source"], "shard": job.rel, "key": raw.key,
               "offset": raw.offset, "size": raw.size, "n_images": len(images),
               "image_bytes": sum(map(len, images)), **sample_lengths(encoder, processor, meta["messages"], images)}
        for name, value in row.items():
            columns[name].append(value)
    with job.cache.writing(job.digest) as tmp:
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp, compression="zstd")
    return str(job.cache.get(job.digest))


def shard_jobs(ingest: Artifact, tokenizer: Artifact, image: dict, pools: tuple[str, ...],
               cache_root: Path) -> list[ShardJob]:
    """One job per ingest shard of ``pools``, in sorted (pool, shard) order."""
    cache = ShardCache(cache_root, code=code_digest(__name__), inputs={"tokenizer": tokenizer.digest}, params=image)
    shards = index_table(ingest, pools, columns=["pool", "shard"]).group_by(["pool", "shard"]).aggregate([])
    return [ShardJob(str((ingest.path / rel).resolve()), rel, pool, ingest.file_digest(rel),
                     str(tokenizer.path.resolve()), image, cache)
            for pool, rel in sorted(zip(shards["pool"].to_pylist(), shards["shard"].to_pylist()))]


def balanced_selection(manifest: Path, pool: str = "mid") -> Callable[[pa.Table], pa.Table]:
    """A filter of one shard's lengths rows: of ``pool``, only the samples ``balance``'s manifest selected (read for
    that shard alone, predicates pushed down); every other pool's rows pass."""
    def keep(table: pa.Table) -> pa.Table:
        if table.num_rows == 0 or table["pool"][0].as_py() != pool:
            return table
        shard = table["shard"][0].as_py()
        selected = pq.read_table(manifest, columns=["sample_id"],
                                 filters=[("shard", "==", shard), ("selected", "==", True)])["sample_id"]
        return table.filter(pc.is_in(table["sample_id"], value_set=selected))
    return keep


def write_lengths(parts: list[str], out: Path, keep: Callable[[pa.Table], pa.Table] | None = None) -> dict:
    """Concatenate per-shard results (in the given order) into ``out``, one shard in memory at a time.

    ``keep`` filters a shard's rows (the concept-balanced subset of ``mid``). Returns samples, tokens, max total.
    """
    stats = {"samples": 0, "tokens": 0, "max_total": 0}
    with pq.ParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for part in parts:
            table = pq.read_table(part)
            if keep is not None:
                table = keep(table)
            writer.write_table(table)
            totals = table["total"].to_numpy()
            stats["samples"] += len(table)
            stats["tokens"] += int(totals.sum())
            stats["max_total"] = max(stats["max_total"], int(totals.max(initial=0)))
    return stats
