"""The concept index of a pool, one source shard at a time, each shard's part cached so that adding a shard
embeds only that shard (the ``concept_index`` stage)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llava_ov.artifacts import Artifact, digest_file, digest_json
from llava_ov.code_digest import code_digest
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.concepts.index import streaming_topk
from llava_ov.data.reader import index, iter_samples
from llava_ov.file_cache import FileCache


@dataclass(frozen=True)
class PoolIndex:
    """Per image of a pool, in shard order: its id, fp16 embedding, top-k concept ids and similarities."""

    sample_ids: list[str]
    embeddings: np.ndarray
    ids: np.ndarray
    sims: np.ndarray
    reused: int  # shards read back from the cache


def index_pool(ingest: Artifact, pool: str, encoder: ImageTextEncoder, encoder_digest: str, concepts: np.ndarray,
               k: int, cache: FileCache) -> PoolIndex:
    """Embed every image of ``pool`` and find its top-``k`` concepts, one source shard at a time.

    A shard's part is cached under (encoder weights, shard bytes, k, code): the code is every project module this
    one runs (the encoder's image loading and preprocessing, the reader, the top-k) plus the numeric libraries'
    versions, so a changed preprocessing re-embeds the shard instead of serving the old embeddings.
    """
    code = code_digest(__name__)
    parts, reused = [], 0
    for shard in sorted({r["shard"] for r in index(ingest, (pool,))}):
        key = digest_json([encoder_digest, digest_file(ingest.path / shard), k, code])
        cached = cache.get(key)
        if cached is not None:
            parts.append(dict(np.load(cached)))
            reused += 1
            continue
        samples = list(iter_samples(ingest, (pool,), shards=(shard,)))
        emb = encoder.embed_images([images[0] for _, _, images in samples])
        top_ids, top_sims = streaming_topk(emb, concepts, k)
        part = {"sample_id": np.array([r["sample_id"] for r, _, _ in samples]), "emb": emb.astype(np.float16),
                "ids": top_ids, "sims": top_sims}
        with cache.writing(key) as path:
            np.savez(path, **part)
        parts.append(part)
    return PoolIndex(sample_ids=[s for p in parts for s in p["sample_id"].tolist()],
                     embeddings=np.concatenate([p["emb"] for p in parts]),
                     ids=np.concatenate([p["ids"] for p in parts]), sims=np.concatenate([p["sims"] for p in parts]),
                     reused=reused)
