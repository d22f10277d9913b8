"""Packed webdataset shards from a plan.

One packed sample per key: ``json`` (member sample_ids, per-sample token counts and image grids),
``input_ids.npy`` (int32), ``loss_mask.npy`` (uint8) and the member images ``0.png``, ``1.png``, ... in order.
Shards are named by the digest of their member sample_ids and reused from a cache folder when a re-plan leaves
them unchanged. The cache key is everything that decides a shard's bytes, not its members alone: the members and
the shard's place in the plan (its sample keys), the tokenizer (vocabulary, merges, special-token ids), the image
settings, and the code that encodes (chat template, system prompt, image grids, tar layout). A tokenizer that
keeps every length but changes ids (reordered special tokens) therefore misses, and so does a damaged entry.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xxhash
from tqdm import tqdm

from llava_ov.artifacts import digest_json
from llava_ov.code_digest import code_digest
from llava_ov.data.shards import ShardWriter
from llava_ov.file_cache import FileCache
from llava_ov.packing.lengths import encode_sample
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def shard_name(sample_ids: list[list[str]]) -> str:
    h = xxhash.xxh3_128()
    for pack in sample_ids:
        h.update(",".join(pack).encode() + b";")
    return h.hexdigest()


def encoding_digest(encoder: ChatEncoder, processor: ImageProcessor) -> str:
    """What turns a sample into packed bytes, besides the sample: tokenizer state, image settings, this code."""
    return digest_json([encoder.tokenizer.backend_tokenizer.to_str(), asdict(processor), code_digest(__name__)])


def encode_pack(encoder: ChatEncoder, processor: ImageProcessor, samples: list[tuple[str, dict, list[bytes]]],
                expected: list[int]) -> dict[str, bytes]:
    """Members of one packed sample; fails if any sample's length differs from the planned one."""
    ids, masks, lengths, grids, images = [], [], [], [], []
    for (sid, meta, imgs), want in zip(samples, expected):
        tokens, mask, sample_grids = encode_sample(encoder, processor, meta["messages"], imgs)
        if len(tokens) != want:
            raise RuntimeError(f"sample {sid}: {len(tokens)} tokens now but {want} in the lengths artifact; the "
                               f"tokenizer or image settings changed without rebuilding `lengths` (dvc repro)")
        ids.append(tokens)
        masks.append(mask)
        lengths.append(len(tokens))
        grids += [list(g) for g in sample_grids]
        images += imgs
    files = {"json": json.dumps({"sample_ids": [s[0] for s in samples], "lengths": lengths, "grids": grids},
                                sort_keys=True).encode(),
             "input_ids.npy": npy_bytes(np.concatenate(ids).astype(np.int32)),
             "loss_mask.npy": npy_bytes(np.concatenate(masks).astype(np.uint8))}
    for i, data in enumerate(images):
        files[f"{i}.png"] = data
    return files


def write_packed_shards(out: Path, packs: list[list[str]], lengths: dict[str, int],
                        samples: dict[str, tuple[dict, list[bytes]]], encoder: ChatEncoder,
                        processor: ImageProcessor, packs_per_shard: int, cache: Path | None) -> list[str]:
    """Write ``packs`` (lists of sample_ids) into shards of ``packs_per_shard``; returns the shard names."""
    names = []
    out.mkdir(parents=True, exist_ok=True)
    shard_cache = FileCache(cache, ".tar") if cache else None
    encoding = encoding_digest(encoder, processor)
    for first in tqdm(range(0, len(packs), packs_per_shard), desc="pack shards", unit="shard"):
        group = packs[first:first + packs_per_shard]
        name = shard_name(group)
        names.append(name)
        target = out / f"{name}.tar"
        key = digest_json([name, first, encoding])
        cached = shard_cache.get(key) if shard_cache else None
        if cached is not None:
            shutil.copyfile(cached, target)
            continue
        tmp_dir = out / f".{name}"
        with ShardWriter(tmp_dir, "p") as writer:
            for j, pack in enumerate(group):
                writer.write(f"{first + j:09d}", encode_pack(
                    encoder, processor, [(sid, *samples[sid]) for sid in pack], [lengths[sid] for sid in pack]))
        (tmp_dir / "p-000000.tar").rename(target)
        tmp_dir.rmdir()
        if shard_cache is not None:
            with shard_cache.writing(key) as entry:
                shutil.copyfile(target, entry)
    return names
