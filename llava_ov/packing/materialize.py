"""Packed webdataset shards from a plan, one shard per task (:func:`materialize_shard`).

One packed sample per key (its slot in the shard, ``000000``, ...): ``json`` (member sample_ids, per-sample token
counts and image grids), ``input_ids.npy`` (int32), ``loss_mask.npy`` (uint8) and the member images ``0.png``,
``1.png``, ... in order. A task seeks each member in its ingest shard by the byte extent the lengths stage recorded.
Shards are named by the digest of their member sample_ids and reused from a cache folder when a re-plan leaves
them unchanged. The cache key is everything that decides a shard's bytes, not its members alone: the members (in
pack and slot order), the tokenizer (vocabulary, merges, special-token ids), the image settings, and the code that
encodes (chat template, system prompt, image grids, tar layout). A tokenizer that
keeps every length but changes ids (reordered special tokens) therefore misses, and so does a damaged entry.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import xxhash
from transformers import AutoTokenizer

from llava_ov.artifacts import digest_json
from llava_ov.code_digest import code_digest
from llava_ov.data.shards import ShardWriter, read_sample_at, read_shard, sample_images
from llava_ov.file_cache import FileCache
from llava_ov.packing.lengths import encode_sample
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor


TAR_BLOCK = 512


def pack_bytes(tokens: np.ndarray, n_images: np.ndarray, image_bytes: np.ndarray) -> np.ndarray:
    """About the bytes each packed sample takes in its shard, known before encoding it (numpy, one value per pack):
    its members (``json``, int32 ids and uint8 loss mask with their 128-byte .npy headers, the images as stored),
    each with a tar header and, on average, half a block of padding. Sizing shards by this keeps the cache lookup
    ahead of the (costly) encoding."""
    def member(size: np.ndarray) -> np.ndarray:
        return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK
    fixed = member(64 + 64 * n_images) + member(128 + 4 * tokens) + member(128 + tokens)
    return fixed + image_bytes + n_images * (TAR_BLOCK + TAR_BLOCK // 2)


def packs_per_shard(pack_sizes: np.ndarray, shard_bytes: int) -> int:
    """Packs per shard for shards of about ``shard_bytes`` (``pack.<stage>.shard_bytes``), from the mean pack size.

    A count, not a cut at the byte target: a shard's name stays a function of its members alone, and every shard
    of a plan group but its last holds the same number of packs. The file count of an artifact is what DVC and
    object stores pay for per file (README, "Sharing artifacts"); this is the knob that sets it.
    """
    mean = float(np.mean(pack_sizes)) if len(pack_sizes) else 1.0
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


@dataclass(frozen=True)
class ShardTask:
    """One packed shard to write: its rows of the plan, and everything its bytes depend on besides them."""

    plan: str  # absolute path of plan.parquet
    out_shard: int
    ingest: str  # absolute path of the ingest artifact (the plan's `shard` paths are relative to it)
    tokenizer: str
    image: dict
    cache: FileCache
    encoding: str  # encoding_digest(): tokenizer state, image settings, this code


@lru_cache(maxsize=2)
def _encoder(tokenizer: str) -> ChatEncoder:
    return ChatEncoder(AutoTokenizer.from_pretrained(tokenizer))


def materialize_shard(task: ShardTask) -> tuple[str, str, list[tuple[int, int]], bool]:
    """Write (or find in the cache) one packed shard; returns (name, cached path, each pack's (offset, size),
    whether it was encoded now rather than served by the cache).

    The shard's name is the digest of its packs' member ids, its cache key that name plus the encoding digest:
    an unchanged group of the plan is served from the cache whatever happened to the other groups.
    """
    rows = pq.read_table(task.plan, filters=[("out_shard", "==", task.out_shard)],
                         columns=["pack", "slot", "sample_id", "shard", "key", "offset", "size", "total"])
    rows = rows.sort_by([("pack", "ascending"), ("slot", "ascending")])
    pack = rows["pack"].to_numpy()
    starts = np.flatnonzero(np.r_[True, pack[1:] != pack[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(pack)]))
    ids = rows["sample_id"].to_pylist()
    members = [ids[a:b] for a, b in bounds]
    name = shard_name(members)
    key = digest_json([name, task.encoding])
    cached = task.cache.get(key)
    computed = cached is None
    if computed:
        encoder, processor = _encoder(task.tokenizer), ImageProcessor(**task.image)
        shards, keys = rows["shard"].to_pylist(), rows["key"].to_pylist()
        offsets, sizes, totals = (rows[c].to_numpy() for c in ("offset", "size", "total"))
        with task.cache.writing(key) as tmp:
            with ShardWriter(tmp.parent, tmp.stem, max_bytes=1 << 62, numbered=False) as writer:
                for j, (a, b) in enumerate(bounds):
                    samples = []
                    for i in range(a, b):
                        raw = read_sample_at(Path(task.ingest) / shards[i], int(offsets[i]), int(sizes[i]), keys[i])
                        meta = json.loads(raw.files["json"])
                        samples.append((ids[i], meta, sample_images(raw.files)))
                    writer.write(f"{j:06d}", encode_pack(encoder, processor, samples, totals[a:b].tolist()))
        cached = task.cache.get(key)
    extents = [(raw.offset, raw.size) for raw in read_shard(cached)]
    if len(extents) != len(bounds):
        raise RuntimeError(f"packed shard {cached} holds {len(extents)} packs, the plan {len(bounds)}")
    return name, str(cached), extents, computed
