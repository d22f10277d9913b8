"""Top-k concept assignment: streaming blocks vs the naive full image × concept matrix, same run.

Random unit vectors stand in for embeddings (the cost does not depend on their values). The naive baseline
materialises the whole similarity matrix, so it runs on a slice of the images that fits in memory and its
throughput is reported for that slice.

Usage: python benchmarks/bench_concepts.py [--images 1000000] [--concepts 100000] [--dim 512] [--naive-images 5000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from llava_ov.concepts.index import streaming_topk


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--concepts", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--naive-images", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    concepts = unit(rng, args.concepts, args.dim)
    # streaming first: peak RSS is a high-water mark, so the naive run must come after it
    print("| method | images | concepts | pairs/s | seconds | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    done, t0 = 0, time.perf_counter()
    chunk = 50_000
    while done < args.images:  # generate as we go: the embeddings of 1M images need not be in memory either
        n = min(chunk, args.images - done)
        streaming_topk(unit(rng, n, args.dim), concepts, args.k)
        done += n
    secs = time.perf_counter() - t0
    print(f"| streaming top-k | {args.images:,} | {args.concepts:,} | {args.images * args.concepts / secs:,.0f} | "
          f"{secs:.1f} | {peak_mb():,.0f} |")
    naive = unit(rng, args.naive_images, args.dim)
    t0 = time.perf_counter()
    full = naive.astype(np.float32) @ concepts.astype(np.float32).T
    np.argpartition(-full, args.k - 1, axis=1)[:, :args.k]
    secs = time.perf_counter() - t0
    del full
    print(f"| naive full matrix | {args.naive_images:,} | {args.concepts:,} | "
          f"{args.naive_images * args.concepts / secs:,.0f} | {secs:.1f} | {peak_mb():,.0f} |")

if __name__ == "__main__":
    main()
