"""Top-k concepts per image on the worker's device: blocked matmul + ``torch.topk`` against a resident concept
matrix. Memory grows with the block sizes, never with images × concepts (85M × 500K similarities would be 170 TB).

Ties are common, not a corner case: distinct vocabulary entries can embed to the same vector (the default profile's
small text tower maps its 25,648 entries to 14,229 distinct ones), so which of several equally similar concepts
make the top-k must be defined, or the answer depends on the selection algorithm, the block size and the device.
Here the lower concept id wins: each similarity is ranked by one int64 key, its float32 bits (order-preserving) in
the high half and the complement of the concept id in the low half.
"""

from __future__ import annotations

import numpy as np
import torch

_LOW = (1 << 32) - 1


def _keys(sims: torch.Tensor, first_id: int) -> torch.Tensor:
    """int64 keys ordered like (similarity, -concept id) for a [rows, cols] block whose column 0 is ``first_id``."""
    bits = sims.float().contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: flip the magnitude bits
    ids = torch.arange(first_id, first_id + sims.shape[1], device=sims.device, dtype=torch.int64)
    return (bits.to(torch.int64) << 32) | (_LOW - ids)


def _decode(keys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    bits = (keys >> 32).to(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (_LOW - (keys & _LOW)).to(torch.int32).cpu().numpy(), bits.view(torch.float32).cpu().numpy()


@torch.no_grad()
def topk_concepts(images: torch.Tensor, concepts: torch.Tensor, k: int, image_block: int = 4096,
                  concept_block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, k] int32, similarities [N, k] float32) of each image's ``k`` most similar concepts, best first,
    equal similarities by lower concept id (in the selection as in the order).

    ``images`` [N, d] and ``concepts`` [C, d] are unit vectors on one device, in one dtype (the matmul runs in it).
    Images are taken ``image_block`` at a time; for each block the concepts are scanned ``concept_block`` at a time
    and a running top-k is merged on the device, so peak memory is O(image_block × concept_block).
    """
    if not 0 < k <= len(concepts):
        raise ValueError(f"top-{k} of {len(concepts)} concepts: k must be in [1, {len(concepts)}]")
    n = len(images)
    out_ids = np.empty((n, k), dtype=np.int32)
    out_sim = np.empty((n, k), dtype=np.float32)
    for i in range(0, n, image_block):
        block = images[i:i + image_block]
        best = torch.full((len(block), k), torch.iinfo(torch.int64).min, device=block.device)
        for j in range(0, len(concepts), concept_block):
            keys = _keys(block @ concepts[j:j + concept_block].T, j)
            part = torch.topk(keys, min(k, keys.shape[1]), dim=1).values
            best = torch.topk(torch.cat([best, part], 1), k, dim=1).values
        out_ids[i:i + len(block)], out_sim[i:i + len(block)] = _decode(best)
    return out_ids, out_sim
