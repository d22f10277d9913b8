"""Packed webdataset shards from a plan.

One packed sample per key: ``json`` (member sample_ids, per-sample token counts and image grids),
``input_ids.npy`` (int32), ``loss_mask.npy`` (uint8) and the member images ``0.png``, ``1.png``, ... in order.
Shards are named by the digest of their member sample_ids and reused from a content-addressed cache folder when
a re-plan leaves them unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import xxhash
from tqdm import tqdm

from llava_ov.data.shards import ShardWriter
from llava_ov.packing.lengths import encode_sample
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor


TAR_BLOCK = 512


def pack_bytes(tokens: int, images: list[bytes]) -> int:
    """About the bytes one packed sample takes in its shard, known before encoding it: its members (``json``, int32
    ids and uint8 loss mask with their 128-byte .npy headers, the images as stored), each with a tar header and
    padding to the block. Sizing shards by this keeps the cache lookup ahead of the (costly) encoding."""
    members = [64 + 64 * len(images), 128 + 4 * tokens, 128 + tokens, *map(len, images)]
    return sum(TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK for size in members)


def packs_per_shard(pack_sizes: list[int], shard_bytes: int) -> int:
    """Packs per shard for shards of about ``shard_bytes`` (``pack.<stage>.shard_bytes``), from the mean pack size.

    A count, not a cut at the byte target: a shard's name stays a function of its members alone, and every shard
    but the last holds the same number of packs. The file count of an artifact is what DVC and object stores pay
    for per file (README, "Sharing artifacts"); this is the knob that sets it.
    """
    mean = sum(pack_sizes) / len(pack_sizes) if pack_sizes else 1.0
    return max(1, int(shard_bytes // mean))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def shard_name(sample_ids: list[list[str]]) -> str:
    h = xxhash.xxh3_128()
    for pack in sample_ids:
        h.update(",".join(pack).encode() + b";")
    return h.hexdigest()


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
    for first in tqdm(range(0, len(packs), packs_per_shard), desc="pack shards", unit="shard"):
        group = packs[first:first + packs_per_shard]
        name = shard_name(group)
        names.append(name)
        target = out / f"{name}.tar"
        cached = cache / f"{name}.tar" if cache else None
        if cached is not None and cached.exists():
            shutil.copyfile(cached, target)
            continue
        tmp_dir = out / f".{name}"
        with ShardWriter(tmp_dir, "p") as writer:
            for j, pack in enumerate(group):
                writer.write(f"{first + j:09d}", encode_pack(
                    encoder, processor, [(sid, *samples[sid]) for sid in pack], [lengths[sid] for sid in pack]))
        (tmp_dir / "p-000000.tar").rename(target)
        tmp_dir.rmdir()
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, cached)
    return names
