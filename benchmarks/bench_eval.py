"""Evaluation speed: shared-prefix log-likelihood vs one row per (prompt, choice), 1 vs 2 torch threads, and a
whole evaluation (every task of params.yaml, no cache) in 1 vs 2 worker processes.

Runs on the first ``--items`` multiple-choice items of the built eval pool (all tasks but the caption loss) with a
built checkpoint, all variants in the same run, and prints seconds, items/s and the ratio to the baseline
(one row per choice: the way a plain loglikelihood loop scores multiple choice). Thread counts matter on a shared
machine: OpenMP barriers stall when another process holds the second core; ``--busy`` runs a busy loop beside the
measurements to show it.

Usage: python benchmarks/bench_eval.py [--checkpoint artifacts/stage0] [--items 300] [--busy]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import torch

from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.eval.cache import ResultCache
from llava_ov.eval.checkpoint import load_checkpoint
from llava_ov.eval.runner import evaluate
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.eval.tasks import build_task, load_spec
from llava_ov.params import section


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="artifacts/stage0")
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--busy", action="store_true", help="keep one core busy with another process meanwhile")
    args = ap.parse_args()
    samples = [(s, im) for _, s, im in iter_samples(open_ingest(), ("eval",))]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        bench_scoring(args, samples)
        bench_workers(args, samples)
    finally:
        if busy:
            busy.kill()


def bench_workers(args: argparse.Namespace, samples: list[tuple[dict, list[bytes]]]) -> None:
    """All tasks of params.yaml through ``evaluate`` with a fresh cache: 1 process vs 2 single-threaded ones."""
    cfg = section("eval")
    tasks = [build_task(load_spec(name), samples, cfg["max_items"]) for name in cfg["tasks"]]
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            evaluate(args.checkpoint, tasks, ResultCache(cache), batch_size=cfg["batch_size"], progress=False,
                     workers=workers, threads=1)
            rows.append((workers, time.perf_counter() - t0))
    print(f"\nwhole evaluation: {len(tasks)} tasks, {sum(len(t.items) for t in tasks)} items")
    print(f"{'processes x threads':20s} {'seconds':>8s} {'speed-up':>8s}")
    for workers, sec in rows:
        print(f"{f'{workers} x 1':20s} {sec:8.2f} {rows[0][1] / sec:8.2f}x")


def bench_scoring(args: argparse.Namespace, samples: list[tuple[dict, list[bytes]]]) -> None:
    """Multiple-choice log-likelihood: one row per choice vs shared prefix, 1 and 2 threads."""
    items = [(Prompt(s["messages"][0]["content"], tuple(im)), list(s["choices"]))
             for s, im in sorted(samples, key=lambda pair: pair[0]["id"]) if s.get("choices")][:args.items]
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
