"""Training step throughput of the 4B-shaped LLaVA-OV-1.5 on one GPU: tokens/s, model TFLOP/s, MFU.

The model is the real 4B shape (RICE-ViT-L/14 + Qwen3-4B widths, 151,936 vocab; ``--layers`` LM layers, 36 by
default) with random weights, trained exactly the way ``train@*`` trains it (``llava_ov.train.trainer.prepare``
/ ``train_step``: megatron DDP + distributed optimizer, fp32 main params and grads) in bf16 with full activation
recompute, on synthetic packed micro-batches: ``--seq`` tokens (8192) of samples of mixed lengths, each with one
image. After ``--warmup`` steps, ``--steps`` steps are timed.

Reported: tokens/s; model FLOPs per step (LM 6·N per token + causal attention per sample, ViT 6·N per patch +
attention per image; the frozen-nothing count, no recompute) → model TFLOP/s and MFU against ``--peak`` (989
TFLOP/s dense bf16 on H100/H200); hardware FLOP/s (+ the recompute forward) as HFU; peak memory. Then the
attention kernel alone at the same shape: packed varlen (``llava_ov.model.packed_attention``) vs SDPA with a dense
block-diagonal causal mask, forward + backward.

A 4B model with the distributed optimizer on one GPU holds ~18 bytes per parameter (~85 GB): use ``--layers``
to fit an 80 GB H100 (e.g. 24). ``--tiny`` runs a tiny shape on the CPU in fp32 (so the script is tested to run).

Usage: python benchmarks/bench_train_gpu.py [--layers 36] [--steps 12] [--seq 8192] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llava_ov.megatron.convert import padded_vocab
from llava_ov.megatron.model import LlavaOVMegatron, device
from llava_ov.model.packed_attention import packed_attention, segment_mask
from llava_ov.model.family import build_config
from llava_ov.plan import LMShape, ViTShape
from llava_ov.train.batches import IGNORE
from llava_ov.train.distributed import init, shutdown
from llava_ov.train.policy import Policy
from llava_ov.train.trainer import Run, prepare, train_step

IMAGE_TOKEN, TEXT_VOCAB = 151655, 151643  # Qwen's <|image_pad|>; ids below TEXT_VOCAB are ordinary text
TINY = dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
            text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=1024))


def synthetic_pack(seq: int, text_vocab: int, image_token: int, image_side: int, mean_len: int,
                   seed: int = 0) -> tuple[dict, list, list]:
    """One packed micro-batch in the loader's format: samples of mixed lengths (each: one image of
    ``image_side``² patches, text, the second half labelled) filling ``seq`` tokens. Returns it with the sample
    lengths and the per-image patch counts."""
    g = torch.Generator().manual_seed(seed)
    merged = (image_side // 2) ** 2
    lengths = []
    while sum(lengths) < seq:
        n = int(torch.randint(mean_len // 2, mean_len * 3 // 2 + 1, (1,), generator=g))
        lengths.append(min(max(n, merged + 8), seq - sum(lengths)))
    if lengths[-1] < merged + 8:  # the tail is too short for an image: merge it into the previous sample
        lengths[-2] += lengths.pop()
    ids = torch.randint(0, text_vocab, (seq,), generator=g)
    labels = torch.full((seq,), IGNORE)
    positions, bounds, offset = [], [0], 0
    for n in lengths:
        ids[offset + 2:offset + 2 + merged] = image_token
        labels[offset + n // 2:offset + n] = ids[offset + n // 2:offset + n]
        positions.append(torch.arange(n))
        offset += n
        bounds.append(offset)
    patches = [image_side * image_side] * len(lengths)
    batch = {"input_ids": ids[None], "labels": labels[None], "position_ids": torch.cat(positions)[None],
             "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
             "pixel_values": torch.randn(sum(patches), 3 * 14 * 14, generator=g),
             "image_grid_thw": torch.tensor([[1, image_side, image_side]] * len(lengths))}
    return batch, lengths, patches


def model_flops(lm: LMShape, vit: ViTShape, lengths: list[int], patches: list[int], recompute: bool) -> float:
    """FLOPs of one training step on one pack: 3 passes (forward + 2× backward), a 4th forward with recompute."""
    passes = 4.0 if recompute else 3.0
    tokens = sum(lengths)
    lm_fwd = 2 * lm.matmul_params * tokens + 2 * lm.layers * lm.heads * lm.head_dim * sum(n * n for n in lengths)
    vit_fwd = 2 * vit.params * sum(patches) + 4 * vit.layers * vit.hidden * sum(p * p for p in patches)
    return passes * (lm_fwd + vit_fwd)


def attention_timing(lengths: list[int], heads: int, groups: int, head_dim: int, dtype: torch.dtype,
                     repeats: int) -> tuple[float, float]:
    """Seconds per forward+backward of causal attention over one pack: packed varlen vs a dense block mask."""
    t = sum(lengths)
    q = torch.randn(t, heads, head_dim, device=device(), dtype=dtype, requires_grad=True)
    k, v = (torch.randn(t, groups, head_dim, device=device(), dtype=dtype, requires_grad=True) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device())
    mask = segment_mask(lengths, causal=True, device=device())  # t x t: what a dense-mask path materialises

    def varlen():
        packed_attention(q, k, v, cu, causal=True, max_seqlen=max(lengths)).sum().backward()

    def dense():
        F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                       attn_mask=mask, enable_gqa=True).sum().backward()

    return _timed(varlen, repeats), _timed(dense, repeats)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=36, help="LM layers (the 4B has 36)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=8192, help="tokens per packed micro-batch")
    ap.add_argument("--mean-sample", type=int, default=1024, help="mean sample length in the pack")
    ap.add_argument("--image-side", type=int, default=28, help="patches per image side (28: a 392 px image)")
    ap.add_argument("--recompute", default="full", choices=["none", "selective", "full"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp32"])
    ap.add_argument("--peak", type=float, default=989e12, help="dense peak FLOP/s of the chip in --dtype")
    ap.add_argument("--tiny", action="store_true", help="tiny shape, fp32, CPU-sized (a run test)")
    args = ap.parse_args()
    if args.tiny:
        args.seq, args.mean_sample, args.image_side, args.dtype = 256, 64, 4, "fp32"
        vocab = TINY["text"]["vocab_size"]
        config = build_config("tiny", vision=TINY["vision"], text=TINY["text"], image_token_id=vocab - 1,
                              video_token_id=vocab - 2, vision_start_token_id=vocab - 3, vision_end_token_id=vocab - 4)
        text_vocab = vocab - 4
    else:
        config = build_config("4b", text=dict(num_hidden_layers=args.layers), image_token_id=IMAGE_TOKEN,
                              video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
        text_vocab = TEXT_VOCAB

    torch.manual_seed(0)
    run = Run(tp=1, pp=1, threads=torch.get_num_threads(), save_every=1 << 30, logit_tolerance=0.0,
              checkpoints=Path("unused"), live_dir=None, dtype=args.dtype, recompute=args.recompute)
    model = LlavaOVMegatron(config, init(1, 1), padded_vocab(config.text_config.vocab_size, 1), run.compute())
    total = args.warmup + args.steps
    policy = Policy(stage="bench", trainable="all", steps=total, lr=1e-5,
                    weight_decay=0.0, beta2=0.95, micro_batch=1, grad_accum=1, beta1=0.9, eps=1e-5, clip_grad=1.0,
                    min_lr=1e-6, warmup_fraction=0.0, seed=0)
    ddp, optimizer, scheduler = prepare(model, policy, run)
    batch, lengths, patches = synthetic_pack(args.seq, text_vocab, config.image_token_id, args.image_side,
                                             args.mean_sample)
    times = []
    for step in range(total):
        _sync()
        start = time.perf_counter()
        (loss, count), _, _ = train_step(ddp, optimizer, [batch])
        scheduler.step(increment=1)
        _sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    text = {k: getattr(config.text_config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                          "num_attention_heads", "num_key_value_heads",
                                                          "head_dim", "vocab_size")}
    vision = {k: getattr(config.vision_config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                             "patch_size", "spatial_merge_size")}
    lm, vit = LMShape.from_hf(text), ViTShape.from_hf(vision, config.text_config.hidden_size)
    flops = model_flops(lm, vit, lengths, patches, recompute=False)
    hw = model_flops(lm, vit, lengths, patches, recompute=args.recompute == "full")
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    t = config.text_config
    varlen_s, dense_s = attention_timing(lengths, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
                                         model.config.params_dtype, repeats=max(2, args.steps // 2))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name}; model: LM {lm.params / 1e6:,.1f}M ({lm.layers} layers), ViT {vit.params / 1e6:,.1f}M; "
          f"{args.dtype}, recompute {args.recompute}, distributed optimizer; pack {args.seq} tokens = "
          f"{len(lengths)} samples with one {args.image_side}x{args.image_side}-patch image each; "
          f"final loss {float(loss / count):.3f}")
    print("| step s | tokens/s | model TFLOP/s | MFU | HFU | peak memory GiB | attention fwd+bwd: varlen ms | "
          "dense-mask ms | varlen speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {seconds:.3f} | {args.seq / seconds:,.0f} | {flops / seconds / 1e12:.1f} | "
          f"{flops / seconds / args.peak:.1%} | {hw / seconds / args.peak:.1%} | {memory:.1f} | "
          f"{varlen_s * 1e3:.2f} | {dense_s * 1e3:.2f} | {dense_s / varlen_s:.2f}x |")
    shutdown()


if __name__ == "__main__":
    main()
