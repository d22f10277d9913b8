"""Offline packing plan: best-fit decreasing over exact lengths, in histogram space.

Samples are grouped by exact length (integers up to the capacity) and open packs by remaining room. Items of
one length are placed in bulk: each step moves a whole group of packs from room ``r`` to room ``r - len`` (the
best fit: the smallest room that still fits), or opens ``ceil(n / (C // len))`` new packs at once. That is
exactly best-fit decreasing, but the work is O(distinct lengths × rooms touched), not O(samples × packs), so
10M samples plan in seconds.

The ViT budget (patches per pack) is enforced afterwards: a pack over it gives up its largest-patch samples,
which are re-packed first-fit under both budgets. The published tool balanced only LLM tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PackPlan:
    """``members[offsets[p]:offsets[p+1]]`` are the item indices of pack ``p``; ``rejected`` item indices."""

    members: np.ndarray
    offsets: np.ndarray
    rejected: np.ndarray
    capacity: int

    @property
    def n_packs(self) -> int:
        return len(self.offsets) - 1

    def pack_sums(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[self.members], self.offsets[:-1]) if self.n_packs else np.zeros(0)


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Pack id of every item (all must be in 1..capacity), by best-fit decreasing."""
    n = len(lengths)
    pack_of = np.empty(n, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    starts = np.flatnonzero(np.r_[True, sorted_len[1:] != sorted_len[:-1]])
    ends = np.r_[starts[1:], n]
    rooms: list[list[int]] = [[] for _ in range(capacity + 1)]
    count = np.zeros(capacity + 1, dtype=np.int64)
    n_packs = 0
    for start, end in zip(starts, ends):
        size = int(sorted_len[start])
        idx = order[start:end]
        pos, total = 0, end - start
        while pos < total:
            fits = np.flatnonzero(count[size:])
            if fits.size:
                room = size + int(fits[0])
                group = rooms[room]
                k = min(total - pos, len(group))
                moved = group[len(group) - k:]
                del group[len(group) - k:]
                count[room] -= k
                pack_of[idx[pos:pos + k]] = moved
                rooms[room - size].extend(moved)
                count[room - size] += k
                pos += k
                continue
            per_pack = capacity // size
            left = total - pos
            new = -(-left // per_pack)
            pack_of[idx[pos:]] = n_packs + np.arange(left) // per_pack
            full, rest = divmod(left, per_pack)
            rooms[capacity - per_pack * size].extend(range(n_packs, n_packs + full))
            count[capacity - per_pack * size] += full
            if rest:
                rooms[capacity - rest * size].append(n_packs + full)
                count[capacity - rest * size] += 1
            n_packs += new
            pos = total
    return pack_of


def _repair_second_budget(pack_of: np.ndarray, lengths: np.ndarray, patches: np.ndarray, capacity: int,
                          patch_capacity: int) -> np.ndarray:
    """Move samples out of packs over the patch budget and re-pack them first-fit under both budgets."""
    n_packs = int(pack_of.max()) + 1 if len(pack_of) else 0
    tok = np.bincount(pack_of, lengths, n_packs).astype(np.int64)
    pat = np.bincount(pack_of, patches, n_packs).astype(np.int64)
    over = np.flatnonzero(pat > patch_capacity)
    if not over.size:
        return pack_of
    evicted = []
    for p in over:
        members = np.flatnonzero(pack_of == p)
        for i in members[np.argsort(-patches[members], kind="stable")]:
            if pat[p] <= patch_capacity:
                break
            pat[p] -= patches[i]
            tok[p] -= lengths[i]
            evicted.append(i)
    room_tok, room_pat = list(capacity - tok), list(patch_capacity - pat)
    for i in sorted(evicted, key=lambda j: (-patches[j], j)):
        target = next((p for p in range(len(room_tok)) if room_tok[p] >= lengths[i] and room_pat[p] >= patches[i]),
                      None)
        if target is None:
            target = len(room_tok)
            room_tok.append(capacity)
            room_pat.append(patch_capacity)
        room_tok[target] -= lengths[i]
        room_pat[target] -= patches[i]
        pack_of[i] = target
    return pack_of


def plan_packs(lengths: np.ndarray, capacity: int, patches: np.ndarray | None = None,
               patch_capacity: int | None = None) -> PackPlan:
    """Plan packs for items of ``lengths`` tokens (and ``patches`` ViT patches) under both budgets.

    Items that cannot fit alone (longer than the capacity, or more patches than the patch budget) are
    returned in ``rejected``; every other item is in exactly one pack.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    patches = np.zeros_like(lengths) if patches is None else np.asarray(patches, dtype=np.int64)
    patch_capacity = patch_capacity or int(patches.max(initial=0)) or 1
    ok = (lengths >= 1) & (lengths <= capacity) & (patches <= patch_capacity)
    valid = np.flatnonzero(ok)
    pack_of = best_fit_decreasing(lengths[valid], capacity)
    pack_of = _repair_second_budget(pack_of, lengths[valid], patches[valid], capacity, patch_capacity)
    # Renumber packs in order of first appearance so the plan does not depend on internal ids.
    order = np.argsort(pack_of, kind="stable")
    _, first, counts = np.unique(pack_of[order], return_index=True, return_counts=True)
    members = valid[order]
    offsets = np.r_[0, np.cumsum(counts)]
    return PackPlan(members=members, offsets=offsets, rejected=np.flatnonzero(~ok), capacity=capacity)


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> int:
    """Number of packs first-fit decreasing uses (the baseline of the benchmark; O(items × packs))."""
    rooms = np.empty(0, dtype=np.int64)
    for size in np.sort(lengths)[::-1]:
        fits = np.flatnonzero(rooms >= size)
        if fits.size:
            rooms[fits[0]] -= size
        else:
            rooms = np.append(rooms, capacity - size)
    return len(rooms)
