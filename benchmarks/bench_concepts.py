"""Concept balancing at the released scale: what each step costs per image, and the plan for 85M images.

Rows (each prints the peak RSS so far; it is a high-water mark, so rows run from small to large):

- preprocess: decode + the encoder's own CLIP image processor, one image at a time, on this machine's CPU (real
  JPEG bytes, 384 px). Sizes the CPU threads a GPU worker needs to keep up.
- embed: the image tower's forward pass on ``--device`` in ``--dtype``, random weights of ``--shape`` (``vith14``:
  MetaCLIP-H/14's vision tower, width 1280, 32 layers, patch 14, 224 px, projection 1024), random pixels.
  images/s, FLOP per image counted from the shape, achieved TFLOP/s and its share of the bf16 dense peak.
- top-k: :func:`llava_ov.concepts.index.topk_concepts` (blocked matmul + torch.topk, concept matrix resident) of
  ``--topk-images`` x ``--concepts`` random unit vectors of width ``--dim``, in float16 on a GPU, float32 on CPU.
- start-up: building a concept-index worker (load the encoder folder + the concept matrix) vs one shard's work at
  the measured rates: what a fresh task per shard would pay again each shard (why workers are actors).
- balance: counts, weights, draws, coverage for ``--balance-images`` synthetic images (Zipf concepts), bytes/image.

Then the plan for 85M images x 500K concepts from the FLOP count and the published peak (computed, not measured).

CPU here:   python benchmarks/bench_concepts.py
GPU:        python benchmarks/bench_concepts.py --device cuda --shape vith14 --dtype bfloat16 --batch 512 \
                --topk-images 1000000 --concepts 500000 --dim 1024
Test shape: python benchmarks/bench_concepts.py --shape tiny --images 16 --topk-images 500 --concepts 3000 --dim 64 \
                --startup-concepts 3000
(``--shape default`` is the default profile's small CLIP.)
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava_ov.actors import Slot
from llava_ov.concepts.balance import report, select
from llava_ov.concepts.encoder import ImageTextEncoder, clip_tokenizer
from llava_ov.concepts.index import topk_concepts
from llava_ov.concepts.shard_index import IndexSpec, ShardIndexer
from llava_ov.shard_cache import ShardCache
from llava_ov.text.tokenizer import train_bpe

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 (published)
PLAN_MFU = 0.4  # assumed share of the peak a bf16 ViT forward reaches (the plan's second column; not measured)
POOL, VOCAB, SHARD = 85_000_000, 500_000, 10_000  # released pool, MetaCLIP entries, images per ~1 GB source shard
SHAPES = {  # vision tower, text tower (the text tower only matters for the start-up row: a worker loads both)
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           max_position_embeddings=16), projection_dim=32),
    "default": dict(vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                                image_size=56, patch_size=14),  # params.yaml: concepts.encoder (the small CLIP)
                    text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=48), projection_dim=128),
    "vith14": dict(vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                               num_attention_heads=16, image_size=224, patch_size=14),
                   text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             max_position_embeddings=77), projection_dim=1024),
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def vision_flops(v: dict, projection: int) -> float:
    """Forward FLOP per image of a CLIP ViT: patch embedding, per layer QKV + output + MLP (2 x MACs) and the two
    attention matmuls, the projection. LayerNorms, softmax and GELU are left out (under 1%)."""
    w, m, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    patch = tokens * 3 * v["patch_size"] ** 2 * w
    per_layer = tokens * (4 * w * w + 2 * w * m) + 2 * tokens * tokens * w
    return 2.0 * (patch + layers * per_layer + w * projection)


def clip_config(shape: str, eos: int) -> CLIPConfig:
    s = SHAPES[shape]
    return CLIPConfig(text_config={**s["text"], "eos_token_id": eos, "pad_token_id": eos}, vision_config=s["vision"],
                      projection_dim=s["projection_dim"])


def row(name: str, rate: str, extra: str, secs: float) -> None:
    print(f"| {name} | {rate} | {extra} | {secs:.1f} | {peak_mb():,.0f} |", flush=True)


def bench_preprocess(encoder: ImageTextEncoder, n: int) -> float:
    """images/s of decode + the encoder's CLIP processor, one image at a time on one thread."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    t0 = time.perf_counter()
    for data in images:
        encoder.pixels(data)
    secs = time.perf_counter() - t0
    side = encoder.processor.crop_size["height"]
    row("preprocess (decode + CLIP processor, 1 thread)", f"{n / secs:,.0f} images/s", f"{side} px from 384 px JPEG",
        secs)
    return n / secs


def bench_embed(model: CLIPModel, shape: str, device: str, dtype: torch.dtype, batch: int, n: int) -> float:
    v = SHAPES[shape]["vision"]
    pixels = torch.randn(batch, 3, v["image_size"], v["image_size"], device=device, dtype=dtype)
    flops = vision_flops(v, SHAPES[shape]["projection_dim"])
    with torch.no_grad():
        model.get_image_features(pixel_values=pixels)  # warm-up (kernels, allocator)
        sync(device)
        t0 = time.perf_counter()
        steps = max(1, n // batch)
        for _ in range(steps):
            model.get_image_features(pixel_values=pixels)
        sync(device)
    secs = time.perf_counter() - t0
    rate = steps * batch / secs
    peak = f", {rate * flops / PEAK_BF16:.1%} of bf16 peak" if device == "cuda" else ""
    row(f"embed {shape} {str(dtype).removeprefix('torch.')} batch {batch} on {device}", f"{rate:,.1f} images/s",
        f"{flops / 1e9:,.3g} GFLOP/image, {rate * flops / 1e12:,.2f} TFLOP/s{peak}", secs)
    return rate


def bench_topk(device: str, n: int, concepts: int, dim: int, k: int) -> float:
    dtype = torch.float16 if device == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)

    def unit(rows: int) -> torch.Tensor:
        x = torch.randn(rows, dim, device=device, generator=gen)
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)

    matrix = unit(concepts)
    chunk = 65536 if device == "cuda" else 4096
    block = 65536 if device == "cuda" else 16384  # int64 keys of 4096 x 65536 similarities: 2 GiB at a time
    topk_concepts(unit(min(n, chunk)), matrix, k, image_block=4096, concept_block=block)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, n, chunk):  # generated as we go: the embeddings of 1M images need not be resident either
        topk_concepts(unit(min(chunk, n - i)), matrix, k, image_block=4096, concept_block=block)
    sync(device)
    secs = time.perf_counter() - t0
    rate = n * concepts / secs
    row(f"top-{k} {n:,} images x {concepts:,} concepts, dim {dim}, {str(dtype).removeprefix('torch.')} on {device}",
        f"{rate:,.0f} pairs/s", f"{2 * dim * rate / 1e12:,.2f} TFLOP/s", secs)
    return rate


def bench_startup(encoder: ImageTextEncoder, shape: str, device: str, dtype: str, concepts: int, embed_rate: float,
                  topk_rate: float, preprocess_rate: float, cpus: int) -> None:
    """Build a concept-index worker from a saved encoder folder and a concept matrix, as each worker does once."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, matrix = Path(tmp) / "encoder", Path(tmp) / "concepts.npy"
        encoder.save(folder)
        x = np.random.default_rng(0).standard_normal((concepts, encoder.model.config.projection_dim), np.float32)
        np.save(matrix, x.astype(np.float16))
        spec = IndexSpec(encoder=str(folder), concepts=str(matrix), k=5, dtype=dtype, batch=256, embeddings=False,
                         n_concepts=concepts, cache=ShardCache(Path(tmp), code="bench", suffix=".npz"))
        t0 = time.perf_counter()
        ShardIndexer(spec, Slot(cpus=cpus, gpu=device == "cuda"))
        secs = time.perf_counter() - t0
    shard = SHARD * (1 / embed_rate + concepts / topk_rate)  # top-k rate measured at --concepts, scaled
    notes = (f"a task per {SHARD:,}-image shard would spend {secs / (secs + shard):.0%} of its time starting at "
             f"the rates measured here")
    if shape == "vith14":  # the plan's GPU rate is for MetaCLIP-H/14 (computed, not measured)
        flops = vision_flops(SHAPES[shape]["vision"], SHAPES[shape]["projection_dim"])
        planned = SHARD * (flops + 2.0 * concepts * SHAPES[shape]["projection_dim"]) / (PLAN_MFU * PEAK_BF16)
        notes += (f", {secs / (secs + planned):.0%} at the plan's GPU rate ({planned:.1f} s per shard, not "
                  f"measured), which needs {SHARD / planned / preprocess_rate:.0f} preprocessing threads per GPU")
    row(f"start-up: load encoder + {concepts:,}-concept matrix (warm page cache)", f"{secs:.1f} s per worker",
        notes, secs)


def bench_balance(n: int, concepts: int, k: int) -> None:
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, concepts + 1) ** 1.1
    topk = rng.choice(concepts, size=(n, k), p=p / p.sum()).astype(np.int32)
    id_hash = rng.integers(0, 2 ** 63, n, dtype=np.int64).astype(np.uint64)
    mix = np.ones(n)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak of what select + report allocate
    t0 = time.perf_counter()
    sel = select("inverse_frequency", topk, mix, n // 4, concepts, id_hash, 0)
    report(topk, sel, concepts)
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    held = (topk.nbytes + id_hash.nbytes + mix.nbytes) / n
    row(f"balance inverse_frequency, {n:,} images, k {k}", f"{n / secs:,.0f} images/s",
        f"inputs {held:.0f} B/image + at most {peak / n:.0f} B/image allocated by the step", secs)


def plan(embed_flops: float) -> None:
    """Hours for the released pool on 8 and 64 GPUs at the published bf16 peak and at an assumed share of it."""
    topk_flops = 2.0 * VOCAB * SHAPES["vith14"]["projection_dim"]
    total = POOL * (embed_flops + topk_flops)
    print(f"\nPlan (computed from the FLOP count, NOT measured): {POOL:,} images x {VOCAB:,} concepts; "
          f"embed {embed_flops / 1e9:.0f} GFLOP/image + top-k {topk_flops / 1e9:.2f} GFLOP/image = "
          f"{total / 1e18:.0f} EFLOP\n")
    print(f"| GPUs | hours at 100% of 989 TFLOP/s | hours at {PLAN_MFU:.0%} (assumed) |")
    print("|---:|---:|---:|")
    for gpus in (8, 64):
        print(f"| {gpus} | {total / (gpus * PEAK_BF16) / 3600:.2f} | "
              f"{total / (gpus * PLAN_MFU * PEAK_BF16) / 3600:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="vith14")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="forward-pass dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--batch", type=int, default=None, help="images per forward pass (default 512 cuda, 8 cpu)")
    ap.add_argument("--images", type=int, default=None, help="images embedded (default 20 batches on cuda, 16 cpu)")
    ap.add_argument("--preprocess-images", type=int, default=200)
    ap.add_argument("--topk-images", type=int, default=None, help="default 1,000,000 on cuda, 20,000 on cpu")
    ap.add_argument("--concepts", type=int, default=None, help="default 500,000 on cuda, 100,000 on cpu")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--startup-concepts", type=int, default=VOCAB, help="concept matrix a worker loads")
    ap.add_argument("--balance-images", type=int, default=10_000_000)
    ap.add_argument("--cpus", type=int, default=2, help="threads of a worker (preprocessing on GPU, torch on CPU)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    batch = args.batch or (512 if cuda else 8)
    torch.set_num_threads(args.cpus)
    side = SHAPES[args.shape]["vision"]["image_size"]
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| step | rate | notes | seconds | peak RSS MB |")
    print("|---|---:|---|---:|---:|")
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(train_bpe(["a photo of a dog and a cat"] * 4, 300))
    model = CLIPModel(clip_config(args.shape, tokenizer.eos_token_id)).to(args.device, getattr(torch, dtype)).eval()
    encoder = ImageTextEncoder(model, tokenizer,
                               CLIPImageProcessorPil(size={"shortest_edge": side},
                                                     crop_size={"height": side, "width": side}), 16)
    pre = bench_preprocess(encoder, args.preprocess_images)
    embed = bench_embed(model, args.shape, args.device, getattr(torch, dtype), batch,
                        args.images or batch * (20 if cuda else 2))
    concepts = args.concepts or (VOCAB if cuda else 100_000)
    topk = bench_topk(args.device, args.topk_images or (1_000_000 if cuda else 20_000), concepts, args.dim, args.k)
    bench_startup(encoder, args.shape, args.device, dtype, args.startup_concepts, embed, topk, pre, args.cpus)
    del model, encoder
    bench_balance(args.balance_images, concepts, args.k)
    plan(vision_flops(SHAPES["vith14"]["vision"], SHAPES["vith14"]["projection_dim"]))


if __name__ == "__main__":
    main()
