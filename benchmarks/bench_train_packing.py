"""Training throughput, packed vs padded: useful (non-pad) tokens per second, measured in one run.

Both modes train the same megatron model (stage0 weights, the stage-2 policy) on the same samples, taken from the
first packs of ``artifacts/pack_stage2`` (default profile data):

- packed: the loader's micro-batches (``micro_batch`` packs of ``capacity`` tokens, cu_seqlens per sample);
- padded: the same samples one per row, ``micro_batch`` rows per micro-batch, each micro-batch padded to its own
  longest sample (dynamic padding, the usual un-packed baseline).

Usage: python benchmarks/bench_train_packing.py [--packs 16] [--micro-batch 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from llava_ov.artifacts import open_artifact
from llava_ov.packing.loader import PackIndex, collate
from llava_ov.params import section
from llava_ov.text.tokenizer import special_ids
from llava_ov.train.distributed import init, shutdown
from llava_ov.train.policy import policy
from llava_ov.train.trainer import load_model, prepare, train_step
from llava_ov.vision.image_processing import ImageProcessor


def split_pack(files: dict[str, bytes], vision_start: int) -> list[dict[str, bytes]]:
    """One packed sample → its member samples, each in the packed-sample format (so ``collate`` reads it)."""
    meta = json.loads(files["json"])
    ids = np.load(io.BytesIO(files["input_ids.npy"]))
    mask = np.load(io.BytesIO(files["loss_mask.npy"]))
    out, offset, image = [], 0, 0
    for sid, length in zip(meta["sample_ids"], meta["lengths"]):
        part = ids[offset:offset + length]
        n_images = int((part == vision_start).sum())
        sample = {"json": json.dumps({"sample_ids": [sid], "lengths": [length],
                                      "grids": meta["grids"][image:image + n_images]}).encode()}
        for name, array in (("input_ids.npy", part), ("loss_mask.npy", mask[offset:offset + length])):
            buf = io.BytesIO()
            np.save(buf, array)
            sample[name] = buf.getvalue()
        for i in range(n_images):
            sample[f"{i}.png"] = files[f"{image + i}.png"]
        out.append(sample)
        offset, image = offset + length, image + n_images
    return out


def measure(ddp, optimizer, batches: list[dict], pad_id: int) -> tuple[float, int, float]:
    """(seconds, useful tokens, padding fraction) for one optimizer step per micro-batch, after one warm-up step."""
    train_step(ddp, optimizer, batches[:1])
    useful = sum(int((b["input_ids"] != pad_id).sum()) for b in batches[1:])
    total = sum(b["input_ids"].numel() for b in batches[1:])
    t0 = time.perf_counter()
    for batch in batches[1:]:
        train_step(ddp, optimizer, [batch])
    return time.perf_counter() - t0, useful, 1 - useful / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packs", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    init_dir = Path("artifacts/stage0")
    packs_art = open_artifact("artifacts/pack_stage2", "pack", 2)
    processor = ImageProcessor.load(init_dir)
    from transformers import AutoTokenizer

    ids = special_ids(AutoTokenizer.from_pretrained(init_dir))
    pad_id = ids["<|endoftext|>"]
    index = PackIndex.of(packs_art)
    packs = [index.read(i) for i in range(min(args.packs, len(index)))]
    capacity = int(packs_art.stats["capacity"])
    samples = [s for p in packs for s in split_pack(p, ids["<|vision_start|>"])]
    mb = args.micro_batch
    packed = [collate(packs[i:i + mb], capacity, pad_id, processor) for i in range(0, len(packs), mb)]
    padded = []
    for i in range(0, len(samples), mb):
        group = samples[i:i + mb]
        longest = max(json.loads(s["json"])["lengths"][0] for s in group)
        padded.append(collate(group, longest, pad_id, processor))

    parallel = init(1, 1)
    torch.manual_seed(0)
    model, _ = load_model(init_dir, parallel)
    ddp, optimizer, _ = prepare(model, policy("stage2", section("train"), seed=0))
    rows = []
    for name, batches in (("padded (baseline)", padded), ("packed", packed)):
        seconds, useful, pad = measure(ddp, optimizer, batches, pad_id)
        rows.append((name, len(batches) - 1, useful, pad, seconds, useful / seconds))
    shutdown()
    base = rows[0][5]
    print(f"{len(samples)} samples from {len(packs)} packs, micro-batch {mb}, {args.threads} threads")
    print(f"{'mode':<18} {'steps':>5} {'useful tok':>10} {'padding':>8} {'seconds':>8} {'useful tok/s':>12} {'ratio':>6}")
    for name, steps, useful, pad, seconds, rate in rows:
        print(f"{name:<18} {steps:>5} {useful:>10} {pad:>8.1%} {seconds:>8.2f} {rate:>12.0f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
