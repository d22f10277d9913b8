"""Concept-balanced selection, deterministic and stable under added data.

Two documented rules:

- ``inverse_frequency`` (the LLaVA-OV-1.5 report): an image's weight is the mean of 1/count(c) over its top-k
  concepts c; it is kept with probability min(1, target × mix[source] × w / Σ mix·w).
- ``metaclip_threshold`` (MetaCLIP): each concept c passes with p(c) = min(1, t / count(c)), drawn per (sample,
  concept); a sample is kept if any of its concepts passes. ``t`` is set so the expected size meets the target.

Every draw is a uniform from xxhash(sample_id, seed[, concept]), so adding samples never changes the draws of
existing ones (only the normalisation), and the same inputs always give the same manifest.
"""

from __future__ import annotations

import numpy as np
import xxhash


def uniform(keys: list[str], seed: int) -> np.ndarray:
    """A stable uniform in [0, 1) per key."""
    return np.array([xxhash.xxh3_64_intdigest(f"{k}:{seed}".encode()) for k in keys], dtype=np.float64) / 2.0 ** 64


def concept_counts(topk: np.ndarray, n_concepts: int) -> np.ndarray:
    return np.bincount(topk.ravel(), minlength=n_concepts)


def inverse_frequency(topk: np.ndarray, mix: np.ndarray, target: int, n_concepts: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, keep probability) per image."""
    counts = concept_counts(topk, n_concepts)
    weight = (1.0 / counts[topk]).mean(1) * mix
    prob = np.minimum(1.0, target * weight / weight.sum())
    for _ in range(20):  # re-spread the mass clipped at 1 so the expected size meets the target
        short = target - prob.sum()
        free = prob < 1.0
        if short <= 1e-6 or not free.any():
            break
        prob[free] = np.minimum(1.0, prob[free] + short * weight[free] / weight[free].sum())
    return weight, prob


def metaclip_threshold(topk: np.ndarray, mix: np.ndarray, target: int, n_concepts: int, sample_ids: list[str],
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep flag, per-sample p = 1 - Π(1 - p(c))) with t found by bisection to meet the target size."""
    counts = concept_counts(topk, n_concepts)
    draws = np.stack([uniform([f"{s}:{c}" for s, c in zip(sample_ids, topk[:, j])], seed)
                      for j in range(topk.shape[1])], 1)

    def kept(t: float) -> np.ndarray:
        p = np.minimum(1.0, t * mix[:, None] / counts[topk])
        return (draws < p).any(1), 1.0 - np.prod(1.0 - p, axis=1)

    lo, hi = 0.0, float(counts.max())
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid)[0].sum() < target else (lo, mid)
    return kept(hi)


def coverage(topk: np.ndarray, selected: np.ndarray, n_concepts: int) -> float:
    """Fraction of vocabulary entries that are among the top-k concepts of at least one selected image."""
    return float(np.unique(topk[selected].ravel()).size / n_concepts)


def tail_share(topk: np.ndarray, selected: np.ndarray, tail: np.ndarray) -> float:
    """Share of selected images whose top-1 concept is a tail concept (rare in the pool)."""
    return float(np.isin(topk[selected, 0], tail).mean()) if selected.any() else 0.0
