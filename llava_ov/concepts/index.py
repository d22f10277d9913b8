"""Top-k concepts per image on the worker's device: blocked matmul + ``torch.topk`` against a resident concept
matrix. Memory grows with the block sizes, never with images × concepts (85M × 500K similarities would be 170 TB).
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def topk_concepts(images: torch.Tensor, concepts: torch.Tensor, k: int, image_block: int = 4096,
                  concept_block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, k] int32, similarities [N, k] float32) of each image's ``k`` most similar concepts, best first.

    ``images`` [N, d] and ``concepts`` [C, d] are unit vectors on one device, in one dtype (the matmul runs in it).
    Images are taken ``image_block`` at a time; for each block the concepts are scanned ``concept_block`` at a time
    and a running top-k is merged on the device, so peak memory is O(image_block × concept_block). The k found are
    ordered best first, equal similarities by concept id.
    """
    if not 0 < k <= len(concepts):
        raise ValueError(f"top-{k} of {len(concepts)} concepts: k must be in [1, {len(concepts)}]")
    n = len(images)
    out_ids = np.empty((n, k), dtype=np.int32)
    out_sim = np.empty((n, k), dtype=np.float32)
    for i in range(0, n, image_block):
        block = images[i:i + image_block]
        best_sim = torch.full((len(block), k), -torch.inf, device=block.device)
        best_ids = torch.zeros((len(block), k), dtype=torch.int64, device=block.device)
        for j in range(0, len(concepts), concept_block):
            sims = block @ concepts[j:j + concept_block].T
            part_sim, part_ids = torch.topk(sims, min(k, sims.shape[1]), dim=1)
            best_sim, keep = torch.topk(torch.cat([best_sim, part_sim.float()], 1), k, dim=1)
            best_ids = torch.gather(torch.cat([best_ids, part_ids + j], 1), 1, keep)
        sim, ids = best_sim.cpu().numpy(), best_ids.cpu().numpy()
        order = np.lexsort((ids, -sim), axis=1)  # best first, ties by id: deterministic
        out_sim[i:i + len(block)] = np.take_along_axis(sim, order, 1)
        out_ids[i:i + len(block)] = np.take_along_axis(ids, order, 1)
    return out_ids, out_sim
