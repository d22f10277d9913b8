"""Top-k concepts per image, streaming: memory grows with the block sizes, never images × concepts."""

from __future__ import annotations

import numpy as np


def streaming_topk(images: np.ndarray, concepts: np.ndarray, k: int, image_block: int = 4096,
                   concept_block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, k] int32, similarities [N, k] float32) of each image's ``k`` most similar concepts, best first.

    Images are taken ``image_block`` at a time; for each block the concepts are scanned ``concept_block`` at a
    time and a running top-k is merged, so peak memory is O(image_block × (concept_block + k)).
    """
    n = len(images)
    out_ids = np.empty((n, k), dtype=np.int32)
    out_sim = np.empty((n, k), dtype=np.float32)
    for i in range(0, n, image_block):
        block = images[i:i + image_block].astype(np.float32)
        best_sim = np.full((len(block), k), -np.inf, dtype=np.float32)
        best_ids = np.zeros((len(block), k), dtype=np.int64)
        for j in range(0, len(concepts), concept_block):
            sims = block @ concepts[j:j + concept_block].astype(np.float32).T
            kk = min(k, sims.shape[1])
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, part, 1)], 1)
            cand_ids = np.concatenate([best_ids, part + j], 1)
            keep = np.argpartition(-cand_sim, k - 1, axis=1)[:, :k]
            best_sim = np.take_along_axis(cand_sim, keep, 1)
            best_ids = np.take_along_axis(cand_ids, keep, 1)
        order = np.lexsort((best_ids, -best_sim), axis=1)  # best first, ties by id: deterministic
        out_sim[i:i + len(block)] = np.take_along_axis(best_sim, order, 1)
        out_ids[i:i + len(block)] = np.take_along_axis(best_ids, order, 1)
    return out_ids, out_sim
