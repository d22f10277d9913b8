"""The pool-level steps of ``ingest``, on uint64 arrays: duplicates across parts and the eval pool vs training.

Parts (:mod:`llava_ov.data.parts`) come in sorted order (released: pools in ``POOLS`` order, files by path;
embedded: sources by name), which is what "earlier" means here. Nothing here holds a Python object per sample,
except for the eval pool, which is small; the peak is about 8 bytes per sample of the largest pool, in step 1:

1. Duplicates across parts: a sample kept under its content id although that content came in an earlier part of
   its pool is dropped (``ingest.dedupe``) or takes its :func:`~llava_ov.data.admission.derived_id`. One sort of
   the pool's content ids finds the repeated ones; only their rows are looked at.
2. Eval vs training: an eval sample sharing an image digest or its content id with a kept training sample is
   rejected, whatever else befell it (a duplicate of it is relabelled with the same reason, by the caller). The
   training parts' arrays stream past the sorted eval set one part at a time.

The result is a *fate* per affected row: its new id, or None and the reason it is dropped.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from llava_ov.data.admission import EVAL_IMAGE_IN_TRAINING, EVAL_SAMPLE_IN_TRAINING, derived_id, duplicate
from llava_ov.data.parts import Part
from llava_ov.data.sources import POOLS

Fate = tuple[str | None, str]  # a kept row's new id (None: dropped) and, when dropped, the reason
EVAL = "eval"


def _in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which ``values`` are in the sorted array ``table`` (memory O(len(values)))."""
    if not len(table):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return table[at] == values


def hex_id(value: int) -> str:
    """A uint64 id as its xxh3-64 hex digest (16 digits, zero-padded)."""
    return f"{value:016x}"


def holders(parts: list[Part], pool: str) -> list[int]:
    """Indices of the parts holding samples of ``pool``."""
    return [i for i, part in enumerate(parts) if pool in part.pools]


def _repeated_content(parts: list[Part], owners: list[int], pool: str) -> np.ndarray:
    """Sorted content ids kept under their own id by more than one part: 8 bytes per sample, one sort."""
    ids = np.empty(sum(parts[i].pools[pool]["kept"] for i in owners), dtype=np.uint64)
    n = 0
    for i in owners:
        a = parts[i].arrays(pool)
        own = a["content"][a["ids"] == a["content"]]
        ids[n:n + len(own)] = own
        n += len(own)
    ids = ids[:n]
    ids.sort()
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def cross_part_duplicates(parts: list[Part], pool: str, dedupe: bool) -> dict[int, dict[int, Fate]]:
    """Step 1 for one pool: part index -> row -> fate of each sample whose content came in an earlier part."""
    owners = holders(parts, pool)
    repeated = _repeated_content(parts, owners, pool) if len(owners) > 1 else np.zeros(0, np.uint64)
    fates: dict[int, dict[int, Fate]] = {}
    seen: set[int] = set()
    for i in owners if len(repeated) else []:
        a = parts[i].arrays(pool)
        rows = np.flatnonzero((a["ids"] == a["content"]) & _in_sorted(a["content"], repeated))
        later = [r for r in rows.tolist() if int(a["content"][r]) in seen]
        seen.update(a["content"][rows].tolist())
        if later:
            origins = parts[i].table(pool).column("origin")
            fates[i] = {r: (None, duplicate(pool)) if dedupe else
                        (derived_id(hex_id(int(a["content"][r])), parts[i].summary["file"], origins[r].as_py()), "")
                        for r in later}
    return fates


def _final_ids(a: dict[str, np.ndarray], fates: dict[int, Fate]) -> np.ndarray:
    """The ids a part's rows end up with after ``fates`` (dropped rows left out)."""
    if not fates:
        return a["ids"]
    ids, keep = a["ids"].copy(), np.ones(len(a["ids"]), dtype=bool)
    for r, (new, _) in fates.items():
        if new is None:
            keep[r] = False
        else:
            ids[r] = int(new, 16)
    return ids[keep]


def eval_overlaps(parts: list[Part], fates: dict[tuple[int, str], dict[int, Fate]]) -> dict[int, str]:
    """Step 2: eval content id -> the reason it must go, for every eval sample overlapping a training pool."""
    evals = [(i, parts[i].arrays(EVAL), parts[i].table(EVAL).column("n_images").to_numpy())
             for i in holders(parts, EVAL)]
    if not evals:
        return {}
    eval_images = np.unique(np.concatenate([a["images"] for _, a, _ in evals]))
    eval_ids = np.unique(np.concatenate([a["content"] for _, a, _ in evals]))
    hit_images: set[int] = set()
    hit_ids: set[int] = set()
    training = [(i, pool) for pool in POOLS if pool != EVAL for i in holders(parts, pool)]
    for i, pool in tqdm(training, desc="ingest: eval vs training", unit="part", mininterval=1.0):
        a = parts[i].arrays(pool)
        hit_images.update(a["images"][_in_sorted(a["images"], eval_images)].tolist())
        ids = _final_ids(a, fates.get((i, pool), {}))
        hit_ids.update(ids[_in_sorted(ids, eval_ids)].tolist())
    reasons: dict[int, str] = {}
    for _, a, n_images in evals:  # the eval pool is small: per-sample Python is fine here
        for content, images in zip(a["content"].tolist(), np.split(a["images"], np.cumsum(n_images)[:-1])):
            if hit_images.intersection(images.tolist()):
                reasons[content] = EVAL_IMAGE_IN_TRAINING
            elif content in hit_ids:
                reasons.setdefault(content, EVAL_SAMPLE_IN_TRAINING)
    return reasons


def settle(parts: list[Part], dedupe: bool) -> tuple[dict[tuple[int, str], dict[int, Fate]], dict[int, str]]:
    """Steps 1 and 2: (part index, pool) -> row -> fate, and the eval overlap reasons by content id."""
    fates = {(i, pool): rows for pool in POOLS for i, rows in cross_part_duplicates(parts, pool, dedupe).items()}
    overlaps = eval_overlaps(parts, fates)
    for i in holders(parts, EVAL) if overlaps else []:
        content = parts[i].arrays(EVAL)["content"].tolist()
        rows = {r: (None, overlaps[c]) for r, c in enumerate(content) if c in overlaps}
        if rows:
            fates[(i, EVAL)] = {**fates.get((i, EVAL), {}), **rows}
    return fates, overlaps
