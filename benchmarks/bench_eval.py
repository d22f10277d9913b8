"""Evaluation speed: shared-prefix log-likelihood vs one row per (prompt, choice), and 1 vs 2 torch threads.

Runs on the first ``--items`` multiple-choice items of the built eval pool (all tasks but the caption loss) with a
built checkpoint, all variants in the same run, and prints seconds, items/s and the ratio to the baseline
(one row per choice: the way a plain loglikelihood loop scores multiple choice). Thread counts matter on a shared
machine: OpenMP barriers stall when another process holds the second core.

Usage: python benchmarks/bench_eval.py [--checkpoint artifacts/stage0] [--items 300]
"""

from __future__ import annotations

import argparse
import time

import torch

from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.eval.checkpoint import load_checkpoint
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.params import section


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="artifacts/stage0")
    ap.add_argument("--items", type=int, default=300)
    args = ap.parse_args()
    samples = sorted((s for _, s, _ in iter_samples(open_ingest(), ("eval",))), key=lambda s: s["id"])
    images = {s["id"]: im for _, s, im in iter_samples(open_ingest(), ("eval",))}
    items = [(Prompt(s["messages"][0]["content"], tuple(images[s["id"]])), list(s["choices"]))
             for s in samples if s.get("choices")][:args.items]
    flat = [(p, [c]) for p, cs in items for c in cs]
    ckpt = load_checkpoint(args.checkpoint)
    batch = section("eval")["batch_size"]
    rows = []
    for name, threads, work in [("one row per choice (baseline)", 1, flat), ("shared prefix", 1, items),
                                ("shared prefix", 2, items)]:
        torch.set_num_threads(threads)
        scorer = Scorer(ckpt, batch_size=batch, progress=False)
        scorer.image_features([b for p, _ in items for b in p.images])  # ViT cost is the same for all variants
        t0 = time.perf_counter()
        scorer.loglikelihood(work)
        rows.append((name, threads, time.perf_counter() - t0))
    base = rows[0][2]
    print(f"{len(items)} items, {len(flat)} choices, checkpoint {args.checkpoint}, batch {batch}")
    print(f"{'variant':32s} {'threads':>7s} {'seconds':>8s} {'items/s':>8s} {'speed-up':>8s}")
    for name, threads, sec in rows:
        print(f"{name:32s} {threads:7d} {sec:8.2f} {len(items) / sec:8.1f} {base / sec:8.2f}x")


if __name__ == "__main__":
    main()
