"""recall@5 of the concept encoder on a small fixed held-out sample, never on millions.

Held out (kept out of the default profile's encoder training): the samples with ``int(sample_id, 16) % 1000 <
held_out_permille``. Scored: at most ``recall_sample`` of them, the ones with the smallest seeded draw of their id
(:mod:`llava_ov.concepts.draws`), so the sample is fixed for a pool, grows only by new data's own draws, and costs the
same at 85M samples as at 10K. A pair counts as a hit when its image's 5 nearest vocabulary entries include a word
or two-word phrase of its own caption; pairs whose caption names no vocabulary entry are not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from llava_ov.concepts.draws import id_hashes, uniform
from llava_ov.concepts.encoder import ImageTextEncoder, UnreadableImage
from llava_ov.concepts.index import topk_concepts
from llava_ov.concepts.vocabulary import caption_concepts

RECALL_SALT = 0x5245_4341_4C4C  # "RECALL": these draws are independent of balancing's, which use the same ids


def is_held_out(sample_id: str, permille: int) -> bool:
    return int(sample_id, 16) % 1000 < permille


def recall_sample(index: Path, pools: tuple[str, ...], permille: int, size: int, seed: int) -> set[str]:
    """The sample ids scored for recall@5, streaming ``index.parquet`` 1M rows at a time: memory O(batch + size)."""
    best_ids, best_draw = np.array([], dtype=str), np.array([], dtype=np.float64)
    for batch in pq.ParquetFile(index).iter_batches(batch_size=1 << 20, columns=["sample_id", "pool"]):
        in_pools = batch.column("sample_id").filter(pc.is_in(batch.column("pool"), value_set=pa.array(list(pools))))
        held = [s for s in in_pools.to_pylist() if is_held_out(s, permille)]
        ids = np.concatenate([best_ids, np.array(held, dtype=str)])
        draw = np.concatenate([best_draw, uniform(id_hashes(held), seed, RECALL_SALT)])
        keep = np.argsort(draw, kind="stable")[:size]
        best_ids, best_draw = ids[keep], draw[keep]
    return set(best_ids.tolist())


def recall_at_5(encoder: ImageTextEncoder, pairs: list[tuple[str, bytes]], vocabulary: list[str],
                concepts: np.ndarray, batch: int = 256) -> dict:
    """recall@5 over the (caption, image) pairs whose caption names a vocabulary entry."""
    vocab_ids = {v: i for i, v in enumerate(vocabulary)}
    scored = [(image, truth) for caption, image in pairs if (truth := caption_concepts(caption, vocab_ids))]
    matrix = torch.from_numpy(concepts).to(encoder.device, torch.float32)
    hits = n = unreadable = 0
    for i in tqdm(range(0, len(scored), batch), desc="recall@5", unit="batch", leave=False):
        pixels, truths = [], []
        for image, truth in scored[i:i + batch]:
            try:
                pixels.append(encoder.pixels(image))
                truths.append(truth)
            except UnreadableImage:
                unreadable += 1
        if pixels:
            top5, _ = topk_concepts(encoder.embed_pixels(torch.stack(pixels)), matrix, 5)
            hits += sum(bool(set(row) & truth) for row, truth in zip(top5.tolist(), truths))
            n += len(truths)
    return {"recall_at_5": round(hits / n, 4) if n else 0.0, "held_out": n, "held_out_unreadable": unreadable}
