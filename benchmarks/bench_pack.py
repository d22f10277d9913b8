"""Packing planner speed and quality at scale, against first-fit decreasing in the same run.

Lengths follow a realistic distribution: image tokens from image sizes under the resize rule (sides drawn from
a log-normal around 700 px, ``smart_resize`` with the training bounds) plus caption tokens with a long tail
(log-normal). Capacity 8192 (the published Stage-1.5 context). Prints samples/s, gap to the lower bound
ceil(total / capacity), and peak memory. FFD is O(samples × packs), so it runs on a 50k-sample subset.

Usage: python benchmarks/bench_pack.py [--sizes 1000000 10000000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from llava_ov.packing.plan import first_fit_decreasing, plan_packs

CAPACITY = 8192


def realistic_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(total tokens, ViT patches) per sample."""
    rng = np.random.default_rng(seed)
    h = rng.lognormal(np.log(700), 0.5, n).clip(60, 4000)
    w = h * rng.lognormal(0, 0.3, n)
    factor, min_px, max_px = 28, 3136, 2_560_000
    hh = np.maximum(factor, np.round(h / factor) * factor)
    ww = np.maximum(factor, np.round(w / factor) * factor)
    big = hh * ww > max_px
    beta = np.sqrt(h * w / max_px)
    hh = np.where(big, np.maximum(factor, np.floor(h / beta / factor) * factor), hh)
    ww = np.where(big, np.maximum(factor, np.floor(w / beta / factor) * factor), ww)
    small = hh * ww < min_px
    beta = np.sqrt(min_px / (h * w))
    hh = np.where(small, np.ceil(h * beta / factor) * factor, hh)
    ww = np.where(small, np.ceil(w * beta / factor) * factor, ww)
    patches = (hh / 14 * ww / 14).astype(np.int64)
    image_tokens = patches // 4
    text = rng.lognormal(np.log(120), 0.9, n).astype(np.int64) + 30  # template + caption, long tail
    total = image_tokens + text
    return total, patches


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--ffd-subset", type=int, default=50_000)
    args = ap.parse_args()
    print(f"| planner | samples | packs | lower bound | gap | seconds | samples/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    sub, _ = realistic_lengths(args.ffd_subset, seed=1)
    sub = sub[sub <= CAPACITY]
    lower = -(-int(sub.sum()) // CAPACITY)
    t0 = time.perf_counter()
    ffd = first_fit_decreasing(sub, CAPACITY)
    t_ffd = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = plan_packs(sub, CAPACITY).n_packs
    t_ours = time.perf_counter() - t0
    for name, packs, secs in [("first-fit decreasing", ffd, t_ffd), ("histogram BFD (ours)", ours, t_ours)]:
        print(f"| {name} | {len(sub):,} | {packs:,} | {lower:,} | {(packs - lower) / lower:.3%} | {secs:.2f} | "
              f"{len(sub) / secs:,.0f} | {peak_mb():,.0f} |")
    for n in args.sizes:
        total, patches = realistic_lengths(n)
        t0 = time.perf_counter()
        plan = plan_packs(total, CAPACITY, patches, 4 * CAPACITY)
        secs = time.perf_counter() - t0
        kept = total[plan.members]
        lower = -(-int(kept.sum()) // CAPACITY)
        print(f"| histogram BFD, 2 budgets | {n:,} | {plan.n_packs:,} | {lower:,} | "
              f"{(plan.n_packs - lower) / lower:.3%} | {secs:.2f} | {n / secs:,.0f} | {peak_mb():,.0f} |")
    print(f"\nspeed-up vs FFD on the subset: {t_ffd / t_ours:.0f}x")


if __name__ == "__main__":
    main()
