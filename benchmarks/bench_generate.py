"""Generation throughput of the evaluation path: greedy answers per second at batch 1 vs batch 16.

Builds the 4B-shaped model (RICE-ViT-L/14 + Qwen3-4B shapes, the ``4b`` size of ``llava_ov/model/family.py``) with random weights
directly on the device, and answers ``--items`` prompts of one image each through the same
:class:`~llava_ov.eval.scoring.Scorer` the eval stage and the lmms-eval adapter use (left-padded batches,
shortest prompts together, image features computed once per image). Every answer is ``--new-tokens`` long: random
weights practically never emit ``<|im_end|>``, so each batch size does the same work. The first batch of each run
is a warm-up and is not timed.

The images are document-sized (``--image`` W×H pixels, resized by the published evaluation bound
``max_pixels=3240000``): 896×672 gives 768 visual tokens, about a DocVQA/ChartQA page at this resolution.

Usage (GPU): python benchmarks/bench_generate.py [--device cuda] [--dtype bfloat16] [--items 64] [--batches 1 16]
Usage (CPU smoke run, tiny shapes): python benchmarks/bench_generate.py --tiny
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava_ov.eval.checkpoint import Checkpoint
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import build_config
from llava_ov.text.template import PLACEHOLDER, ChatEncoder
from llava_ov.text.tokenizer import special_ids, train_bpe
from llava_ov.vision.image_processing import ImageProcessor

QUESTION = "What is the total shown in the last row of the table? Answer the question using a single word or phrase."


def build_checkpoint(preset: str, device: str, dtype: torch.dtype, max_pixels: int) -> Checkpoint:
    """A random-weight model of ``preset``'s shapes with a small tokenizer carrying the Qwen special tokens."""
    tokenizer = train_bpe([QUESTION] * 50, 400)
    ids = special_ids(tokenizer)
    config = build_config(preset, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                          vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # allocated where it runs: a 4.7B model never sits in host memory
            model = LlavaOV15ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return Checkpoint(path=Path("random"), digest="random", model=model, tokenizer=tokenizer,
                      encoder=ChatEncoder(tokenizer), images=ImageProcessor(max_pixels=max_pixels))


def prompts(items: int, width: int, height: int) -> list[Prompt]:
    """``items`` distinct noise images (distinct bytes: no image is served from the feature cache twice)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(items):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        out.append(Prompt(f"{PLACEHOLDER}\n{QUESTION}", (buf.getvalue(),)))
    return out


def measure(ckpt: Checkpoint, batch: int, items: list[Prompt], warmup: list[Prompt], new_tokens: int) -> float:
    """Seconds to answer ``items`` at ``batch`` prompts per forward (after a warm-up batch)."""
    scorer = Scorer(ckpt, batch_size=batch, progress=False)
    scorer.generate(warmup[:batch], new_tokens)
    if ckpt.model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    scorer.generate(items, new_tokens)
    if ckpt.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, few small items, on CPU (a smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--items", type=int, default=None, help="prompts per measurement (default 64; --tiny 8)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 16; --tiny 1 4)")
    ap.add_argument("--new-tokens", type=int, default=None, help="answer length (default 32; --tiny 4)")
    ap.add_argument("--image", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="image size (default 896 672; --tiny 112 84)")
    ap.add_argument("--max-pixels", type=int, default=3240000)
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    items = args.items or (8 if args.tiny else 64)
    batches = args.batches or ([1, 4] if args.tiny else [1, 16])
    new_tokens = args.new_tokens or (4 if args.tiny else 32)
    width, height = args.image or ((112, 84) if args.tiny else (896, 672))

    ckpt = build_checkpoint("tiny" if args.tiny else "4b", device, dtype, args.max_pixels)
    work = prompts(items + max(batches), width, height)
    visual_tokens = ckpt.images.num_image_tokens(ckpt.images.grid(width, height))
    params = sum(p.numel() for p in ckpt.model.parameters())
    print(f"{'tiny' if args.tiny else '4B'}-shaped model, {params / 1e6:,.1f}M parameters, random weights, {dtype} "
          f"on {device}; {items} items of one {width}x{height} image ({visual_tokens} visual tokens), "
          f"{new_tokens} new tokens each")
    rows = []
    for batch in batches:
        seconds = measure(ckpt, batch, work[:items], work[items:], new_tokens)
        rows.append({"batch": batch, "seconds": seconds, "items_per_s": items / seconds,
                     "tokens_per_s": items * new_tokens / seconds})
    print(f"| batch | seconds | items/s | new tokens/s | vs batch {rows[0]['batch']} |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['seconds']:.2f} | {r['items_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['items_per_s'] / rows[0]['items_per_s']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
