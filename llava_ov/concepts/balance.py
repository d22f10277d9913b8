"""Concept-balanced selection, deterministic, stable under added data, and vectorised for 85M images.

Two documented rules:

- ``inverse_frequency`` (the LLaVA-OV-1.5 report): an image's weight is the mean of 1/count(c) over its top-k
  concepts c, times its source's mix weight; it is kept with probability min(1, target × w / Σ w), the mass
  clipped at 1 re-spread so the expected size meets the target.
- ``metaclip_threshold`` (MetaCLIP): each concept c passes with p(c) = min(1, t × mix / count(c)), drawn per
  (sample, concept); a sample is kept if any of its concepts passes; ``t`` is the smallest threshold that keeps
  ``target`` samples.

Every draw is a uniform of (the sample's stored ``id_hash``, seed[, concept]) (:mod:`llava_ov.concepts.draws`), so
adding samples never changes the draws of existing ones (only the normalisation). Counts are one ``np.bincount``;
everything else is a few numpy columns: about 60 bytes per image for k = 5, no Python object per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llava_ov.concepts.draws import uniform

METHODS = ("inverse_frequency", "metaclip_threshold")
_CHUNK = 1 << 22  # rows per vectorised step where a [rows, k] float64 temporary would otherwise be made


@dataclass
class Selection:
    weight: np.ndarray  # float64 per image: the method's weight (inverse_frequency) or keep probability (metaclip)
    selected: np.ndarray  # bool per image
    random: np.ndarray  # bool per image: a uniform sample of the same expected size (the baseline)


def concept_counts(topk: np.ndarray, n_concepts: int) -> np.ndarray:
    """Images per concept (a concept counts once per image whose top-k holds it)."""
    return np.bincount(topk.ravel(), minlength=n_concepts)


def inverse_frequency(topk: np.ndarray, mix: np.ndarray, target: int, n_concepts: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, keep probability) per image."""
    counts = concept_counts(topk, n_concepts)
    weight = np.empty(len(topk), dtype=np.float64)
    for i in range(0, len(topk), _CHUNK):
        weight[i:i + _CHUNK] = (1.0 / counts[topk[i:i + _CHUNK]]).mean(1) * mix[i:i + _CHUNK]
    prob = np.minimum(1.0, target * weight / weight.sum())
    for _ in range(20):  # re-spread the mass clipped at 1 so the expected size meets the target
        short = target - prob.sum()
        free = prob < 1.0
        if short <= 1e-6 or not free.any():
            break
        prob[free] = np.minimum(1.0, prob[free] + short * weight[free] / weight[free].sum())
    return weight, prob


def metaclip_threshold(topk: np.ndarray, mix: np.ndarray, target: int, n_concepts: int, id_hash: np.ndarray,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep flag, per-sample p = 1 - Π(1 - p(c))) with t the smallest threshold that keeps ``target`` samples.

    Concept c of sample i passes when draw(i, c) < t × mix_i / count(c), i.e. when t exceeds draw × count / mix;
    so sample i is kept exactly when t exceeds its smallest such value τ_i, and t is the target-th smallest τ
    (one partition, where a bisection on t would pass over the [N, k] draws fifty times).
    """
    counts = concept_counts(topk, n_concepts)
    tau = np.full(len(topk), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(topk.shape[1]):
            draw = uniform(id_hash, seed, topk[:, j].astype(np.uint64) + np.uint64(1))  # salt 0 is the keep draw
            tau = np.minimum(tau, np.where(mix > 0, draw * counts[topk[:, j]] / mix, np.inf))
    target = min(target, int(np.isfinite(tau).sum()))
    t = np.nextafter(np.partition(tau, target - 1)[target - 1], np.inf) if target > 0 else 0.0
    keep = tau < t
    prob = np.ones(len(topk), dtype=np.float64)
    for j in range(topk.shape[1]):
        prob *= 1.0 - np.minimum(1.0, t * mix / counts[topk[:, j]])
    return keep, 1.0 - prob


def select(method: str, topk: np.ndarray, mix: np.ndarray, target: int, n_concepts: int, id_hash: np.ndarray,
           seed: int) -> Selection:
    """Dispatch on ``balance.method``, and draw the uniform baseline of the same expected size."""
    target = min(int(target), len(topk))
    u = uniform(id_hash, seed)
    if method == "inverse_frequency":
        weight, prob = inverse_frequency(topk, mix, target, n_concepts)
        selected = u < prob
    elif method == "metaclip_threshold":
        selected, weight = metaclip_threshold(topk, mix, target, n_concepts, id_hash, seed)
    else:
        raise ValueError(f"balance.method must be one of {METHODS}, not {method!r}")
    random = u < (selected.sum() / max(len(u), 1))
    return Selection(weight=weight, selected=selected, random=random)


def coverage(topk: np.ndarray, selected: np.ndarray, n_concepts: int) -> float:
    """Fraction of vocabulary entries that are among the top-k concepts of at least one selected image."""
    return float(np.count_nonzero(concept_counts(topk[selected], n_concepts)) / n_concepts)


def tail_share(topk: np.ndarray, selected: np.ndarray, tail: np.ndarray) -> float:
    """Share of selected images whose top-1 concept is a tail concept (rare in the pool)."""
    return float(tail[topk[selected, 0]].mean()) if selected.any() else 0.0


def tail_concepts(counts: np.ndarray) -> np.ndarray:
    """bool per concept: present in the pool, at or below the median count of present concepts."""
    present = counts > 0
    return present & (counts <= np.quantile(counts[present], 0.5)) if present.any() else present


def report(topk: np.ndarray, sel: Selection, n_concepts: int) -> dict:
    """Coverage and tail share before (pool), after (balanced) and for the uniform baseline."""
    tail = tail_concepts(concept_counts(topk, n_concepts))
    everything = np.ones(len(topk), bool)
    out = {"pool": len(topk), "selected": int(sel.selected.sum()), "random_selected": int(sel.random.sum())}
    for name, mask in (("before", everything), ("after", sel.selected), ("random", sel.random)):
        out[f"coverage_{name}"] = round(coverage(topk, mask, n_concepts), 5)
        out[f"tail_share_{name}"] = round(tail_share(topk, mask, tail), 4)
    return out
