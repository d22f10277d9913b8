"""Exact lengths of every training sample, computed by the code the loader runs.

For each sample: text tokens, image tokens (one ``<|image_pad|>`` per merged patch, from the image size under the
resize rule, without decoding pixels), ViT patches and the total, all through :class:`ChatEncoder` — so a plan
made from these lengths is exactly what the loader will produce.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from PIL import Image
from tqdm import tqdm
from transformers import AutoTokenizer

from llava_ov.data.reader import index, iter_samples, open_ingest
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor

SCHEMA = pa.schema([("sample_id", pa.string()), ("pool", pa.string()), ("source", pa.string()),
                    ("shard", pa.string()), ("key", pa.string()), ("text_tokens", pa.int32()),
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


def _shard_lengths(args: tuple[str, str, dict, tuple[str, ...], str, set[str] | None]) -> list[dict]:
    ingest_path, tokenizer_path, proc_cfg, pools, shard, keep = args
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tokenizer_path))
    processor = ImageProcessor(**proc_cfg)
    art = open_ingest(ingest_path)
    rows = []
    for row, meta, images in iter_samples(art, pools, shards=(shard,)):
        if keep is not None and row["sample_id"] not in keep:
            continue
        rows.append({k: row[k] for k in ("sample_id", "pool", "source", "shard", "key")}
                    | sample_lengths(encoder, processor, meta["messages"], images))
    return rows


def compute_lengths(ingest_path: Path, tokenizer_path: Path, proc_cfg: dict, pools: tuple[str, ...],
                    keep: dict[str, set[str]] | None = None, workers: int = 2) -> pa.Table:
    """Lengths of every kept sample of ``pools`` (``keep[pool]``, if given, restricts a pool to those ids)."""
    art = open_ingest(ingest_path)
    shards = sorted({(r["pool"], r["shard"]) for r in index(art, pools)})
    jobs = [(str(ingest_path), str(tokenizer_path), proc_cfg, (pool,), shard, (keep or {}).get(pool))
            for pool, shard in shards]
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers) as pool_exec:
        for part in tqdm(pool_exec.map(_shard_lengths, jobs), total=len(jobs), desc="lengths", unit="shard"):
            rows += part
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def pool_rows(table: pa.Table, pools: list[str] | tuple[str, ...]) -> tuple[pa.Table, str]:
    """The rows of ``pools`` from a ``lengths`` table, and an xxh3-128 digest of exactly those rows.

    ``lengths`` covers every training pool, so a new balance manifest (which only selects ``mid``) changes that
    artifact. A pack records the digest of the rows it read instead of the whole artifact's, so pack@stage1 comes
    out byte-identical after a balance change and DVC does not retrain Stage-1 on the same packs."""
    rows = table.filter(pc.is_in(table["pool"], pa.array(list(pools)))).combine_chunks().replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return rows, xxhash.xxh3_128_hexdigest(sink.getvalue().to_pybytes())
