"""Concept-balanced selection, deterministic, stable under added data, and vectorised for 85M images.

Two documented rules:

- ``inverse_frequency`` (the LLaVA-OV-1.5 report): an image's weight is the mean of 1/count(c) over its top-k
  concepts c, times its source's mix weight; it is kept with probability min(1, target × w / Σ w), the mass
  clipped at 1 re-spread so the expected size meets the target.
- ``metaclip_threshold`` (MetaCLIP): each concept c passes with p(c) = min(1, t × mix / count(c)), drawn per
  (sample, concept); a sample is kept if any of its concepts passes; ``t`` is the smallest threshold that keeps
  ``target`` samples.

Every draw is a uniform of (the sample's stored ``id_hash``, seed[, concept]) (:mod:`llava_ov.concepts.draws`), so
adding samples never changes the draws of existing ones (only the normalisation). Counts are ``np.bincount``s;
everything else is a few numpy columns (about 50 bytes per image for k = 5: the top-k, ``id_hash``, a source
code, weight and probability, three flags) and temporaries made a chunk of rows at a time; no Python object per
image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from llava_ov.concepts.draws import uniform

METHODS = ("inverse_frequency", "metaclip_threshold")
_CHUNK = 1 << 17  # rows per vectorised step: every per-row temporary is made a chunk at a time, never [N] or [N, k]


class Mix(Protocol):
    """Each image's source weight (``balance.mix``), read a slice at a time: a float64 array per image, or
    :class:`llava_ov.concepts.manifest.SourceMix` (a source code per image, 4 bytes instead of 8)."""

    def __getitem__(self, rows: slice) -> np.ndarray: ...


@dataclass
class Selection:
    weight: np.ndarray  # float64 per image: the method's weight (inverse_frequency) or keep probability (metaclip)
    selected: np.ndarray  # bool per image
    random: np.ndarray  # bool per image: a uniform sample of the same expected size (the baseline)


def _chunks(n: int) -> Iterator[slice]:
    for i in range(0, n, _CHUNK):
        yield slice(i, min(i + _CHUNK, n))


def concept_counts(topk: np.ndarray, n_concepts: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Images per concept (a concept counts once per image whose top-k holds it), of the images in ``mask``.
    A chunk at a time: ``np.bincount`` casts its input to int64, which for all of [N, k] int32 is 8k bytes per image."""
    counts = np.zeros(n_concepts, dtype=np.int64)
    for rows in _chunks(len(topk)):
        chunk = topk[rows] if mask is None else topk[rows][mask[rows]]
        counts += np.bincount(chunk.ravel(), minlength=n_concepts)
    return counts


def inverse_frequency(topk: np.ndarray, mix: Mix, target: int, n_concepts: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, keep probability) per image."""
    counts = concept_counts(topk, n_concepts)
    weight, prob = np.empty(len(topk), dtype=np.float64), np.empty(len(topk), dtype=np.float64)
    for rows in _chunks(len(topk)):
        weight[rows] = (1.0 / counts[topk[rows]]).mean(1) * mix[rows]
    total = weight.sum()
    for rows in _chunks(len(topk)):
        prob[rows] = np.minimum(1.0, target * weight[rows] / total)
    for _ in range(20):  # re-spread the mass clipped at 1 so the expected size meets the target
        short = target - prob.sum()
        free = prob < 1.0
        if short <= 1e-6 or not free.any():
            break
        free_total = np.add.reduce(weight, where=free)
        for rows in _chunks(len(topk)):
            p, f = prob[rows], free[rows]
            p[f] = np.minimum(1.0, p[f] + short * weight[rows][f] / free_total)
    return weight, prob


def metaclip_threshold(topk: np.ndarray, mix: Mix, target: int, n_concepts: int, id_hash: np.ndarray,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep flag, per-sample p = 1 - Π(1 - p(c))) with t the smallest threshold that keeps ``target`` samples.

    Concept c of sample i passes when draw(i, c) < t × mix_i / count(c), i.e. when t exceeds draw × count / mix;
    so sample i is kept exactly when t exceeds its smallest such value τ_i, and t is the target-th smallest τ
    (one partition, where a bisection on t would pass over the [N, k] draws fifty times).
    """
    counts = concept_counts(topk, n_concepts)
    tau = np.empty(len(topk), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for rows in _chunks(len(topk)):
            m, smallest = mix[rows], np.full(rows.stop - rows.start, np.inf)
            for j in range(topk.shape[1]):
                concept = topk[rows, j]
                draw = uniform(id_hash[rows], seed, concept.astype(np.uint64) + np.uint64(1))  # salt 0: keep draw
                smallest = np.minimum(smallest, np.where(m > 0, draw * counts[concept] / m, np.inf))
            tau[rows] = smallest
    target = min(target, int(np.isfinite(tau).sum()))
    t = np.nextafter(np.partition(tau, target - 1)[target - 1], np.inf) if target > 0 else 0.0
    keep = tau < t
    del tau
    prob = np.empty(len(topk), dtype=np.float64)
    for rows in _chunks(len(topk)):
        m, miss = mix[rows], np.ones(rows.stop - rows.start)
        for j in range(topk.shape[1]):
            miss *= 1.0 - np.minimum(1.0, t * m / counts[topk[rows, j]])
        prob[rows] = 1.0 - miss
    return keep, prob


def _draw_below(id_hash: np.ndarray, seed: int, threshold: np.ndarray | float) -> np.ndarray:
    """bool per image: its keep draw (salt 0) is below ``threshold`` (per image, or one value)."""
    out = np.empty(len(id_hash), dtype=bool)
    for rows in _chunks(len(id_hash)):
        out[rows] = uniform(id_hash[rows], seed) < (threshold[rows] if isinstance(threshold, np.ndarray)
                                                     else threshold)
    return out


def select(method: str, topk: np.ndarray, mix: Mix, target: int, n_concepts: int, id_hash: np.ndarray,
           seed: int) -> Selection:
    """Dispatch on ``balance.method``, and draw the uniform baseline of the same expected size."""
    target = min(int(target), len(topk))
    if method == "inverse_frequency":
        weight, prob = inverse_frequency(topk, mix, target, n_concepts)
        selected = _draw_below(id_hash, seed, prob)
        del prob
    elif method == "metaclip_threshold":
        selected, weight = metaclip_threshold(topk, mix, target, n_concepts, id_hash, seed)
    else:
        raise ValueError(f"balance.method must be one of {METHODS}, not {method!r}")
    random = _draw_below(id_hash, seed, selected.sum() / max(len(topk), 1))
    return Selection(weight=weight, selected=selected, random=random)


def coverage(topk: np.ndarray, selected: np.ndarray | None, n_concepts: int) -> float:
    """Fraction of vocabulary entries that are among the top-k concepts of at least one selected image (``None``:
    every image)."""
    return float(np.count_nonzero(concept_counts(topk, n_concepts, selected)) / n_concepts)


def tail_share(topk: np.ndarray, selected: np.ndarray | None, tail: np.ndarray) -> float:
    """Share of selected images whose top-1 concept is a tail concept (rare in the pool)."""
    if selected is None:
        return float(tail[topk[:, 0]].mean()) if len(topk) else 0.0
    n = int(selected.sum())
    hits = sum(int(np.count_nonzero(tail[topk[rows, 0][selected[rows]]])) for rows in _chunks(len(topk)))
    return hits / n if n else 0.0


def tail_concepts(counts: np.ndarray) -> np.ndarray:
    """bool per concept: present in the pool, at or below the median count of present concepts."""
    present = counts > 0
    return present & (counts <= np.quantile(counts[present], 0.5)) if present.any() else present


def report(topk: np.ndarray, sel: Selection, n_concepts: int) -> dict:
    """Coverage and tail share before (pool), after (balanced) and for the uniform baseline."""
    tail = tail_concepts(concept_counts(topk, n_concepts))
    out = {"pool": len(topk), "selected": int(sel.selected.sum()), "random_selected": int(sel.random.sum())}
    for name, mask in (("before", None), ("after", sel.selected), ("random", sel.random)):
        out[f"coverage_{name}"] = round(coverage(topk, mask, n_concepts), 5)
        out[f"tail_share_{name}"] = round(tail_share(topk, mask, tail), 4)
    return out
