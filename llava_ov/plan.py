"""Cost plan: tokens, optimizer steps and GPU-hours per training stage, before anything runs.

The estimate is the usual dense-transformer count. Per LLM position the hardware does ``2N`` FLOPs forward, ``4N``
backward and, with full activation recompute (the published recipe), another ``2N`` forward, plus the attention
score/value products, which with packing scale with each *sample's* length, not the pack's. Packs are fixed-length
sequences, so the padding left in them (``1 - fill``) costs matmul FLOPs like real tokens. The ViT adds the same
terms over its patches (4 per visual token after the 2×2 merger) with full, bidirectional attention per image. A
frozen tower still back-propagates activations when something before it trains (~2× forward) but skips weight
gradients. Hardware FLOPs divided by (peak × utilisation) give the time; with utilisation read as hardware FLOPs
utilisation (HFU) this matches how the published 45% figure was stated.

What it leaves out (so it reads low, never high, for a well-run job): data loading stalls, checkpoint saves,
pipeline bubbles, restarts, and the merger counted per patch instead of per merged token (tiny).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Dense bf16 peak FLOP/s of common accelerators (vendor figures, no sparsity).
PEAK_FLOPS = {"a800": 312e12, "a100": 312e12, "h100": 989e12, "h200": 989e12, "h800": 989e12}


@dataclass(frozen=True)
class Published:
    """A published training run to hold a plan against (reference/recipe.md), with the per-sample token means
    a plan of it assumes (``text_tokens``, ``image_tokens``: not published, see ``PUBLISHED_8B_STAGE1_5``)."""

    label: str
    model: str
    stage: str
    samples: int
    seq_len: int
    gpus: int
    accelerator: str
    days: float
    text_tokens: float
    image_tokens: float

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.days * 24


# LLaVA-OV-1.5 report: Stage-1.5 of the 8B on 85M samples at 8K context took 128 A800 GPUs about 3.7 days.
# Tokens per sample were not published. The project's README states "only 64B tokens" of pre-training and SFT
# data: 64e9 / 85M = 753 tokens per sample bounds Stage-1.5's mean from above. Split as 500 image tokens (one
# ~560x700 image: a 20x25 grid of merged patches) + 253 text tokens (template + a dense caption); moving 150
# tokens between the two changes the estimate by about 5%, since a visual token costs the LLM the same as a text
# token plus ~18% for its 4 ViT patches.
PUBLISHED_8B_STAGE1_5 = Published(label="8B Stage-1.5, 85M samples at 8K context", model="8b", stage="stage1_5",
                                  samples=85_000_000, seq_len=8192, gpus=128, accelerator="a800", days=3.7,
                                  text_tokens=253, image_tokens=500)


@dataclass(frozen=True)
class LMShape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_hf(cls, text: dict) -> "LMShape":
        """From Qwen3 config keys (``num_hidden_layers``, ``hidden_size``, ...), as the family registry and params hold them."""
        return cls(layers=text["num_hidden_layers"], hidden=text["hidden_size"], ffn=text["intermediate_size"],
                   heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"],
                   head_dim=text["head_dim"], vocab=text["vocab_size"],
                   tied=bool(text.get("tie_word_embeddings", False)))

    @property
    def params(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attn = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + 2 * self.head_dim
        mlp = 3 * self.hidden * self.ffn
        norms = 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attn + mlp + norms) + embed + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token (the input embedding is a lookup)."""
        return self.params - self.vocab * self.hidden * (0 if self.tied else 1)


@dataclass(frozen=True)
class ViTShape:
    layers: int
    hidden: int
    mlp: int
    patch: int = 14
    merge: int = 2
    llm_hidden: int = 0

    @classmethod
    def from_hf(cls, vision: dict, llm_hidden: int) -> "ViTShape":
        """From RICE/MLCD config keys, with the merger projecting into an LLM of width ``llm_hidden``."""
        return cls(layers=vision["num_hidden_layers"], hidden=vision["hidden_size"],
                   mlp=vision["intermediate_size"], patch=vision.get("patch_size", 14),
                   merge=vision.get("spatial_merge_size", 2), llm_hidden=llm_hidden)

    @property
    def params(self) -> int:
        block = 4 * self.hidden * self.hidden + 4 * self.hidden + 2 * self.hidden * self.mlp + self.mlp + self.hidden
        block += 4 * self.hidden  # two LayerNorms
        embed = 3 * self.patch * self.patch * self.hidden + self.hidden + self.hidden // 2 + 2 * self.hidden
        merged = self.hidden * self.merge * self.merge
        merger = 2 * self.hidden + merged * merged + merged + merged * self.llm_hidden + self.llm_hidden
        return self.layers * block + embed + merger


@dataclass(frozen=True)
class StageCost:
    name: str
    samples: int
    text_tokens: float
    image_tokens: float
    epochs: float
    seq_len: int
    fill: float
    global_batch: int
    llm_tokens: float
    vit_patches: float
    packs: int
    steps: int
    flops: float
    gpu_hours: float
    days: float


def stage_cost(name: str, lm: LMShape, vit: ViTShape, *, samples: int, text_tokens: float, image_tokens: float,
               epochs: float = 1.0, seq_len: int = 8192, fill: float = 1.0, global_batch: int = 16,
               gpus: int = 128, accelerator: str = "a800", utilisation: float = 0.45, recompute: bool = True,
               trainable_vit: bool = True, trainable_llm: bool = True) -> StageCost:
    """Estimate one stage. ``text_tokens``/``image_tokens`` are means per sample (image tokens after merging);
    ``fill`` is the packs' mean fill (tokens / capacity), so ``1 / fill`` of the matmul work is real."""
    if accelerator.lower() not in PEAK_FLOPS:
        raise ValueError(f"unknown accelerator {accelerator!r}; known: {sorted(PEAK_FLOPS)}")
    if not (0 < fill <= 1) or not (0 < utilisation <= 1):
        raise ValueError(f"fill ({fill}) and utilisation ({utilisation}) must lie in (0, 1]")
    per_sample = text_tokens + image_tokens
    if per_sample > seq_len:
        raise ValueError(f"{name}: a mean sample of {per_sample:.0f} tokens does not fit a {seq_len}-token pack")
    llm_tokens = samples * per_sample * epochs
    positions = llm_tokens / fill  # what the packs hold, padding included
    patches_per_sample = image_tokens * vit.merge * vit.merge
    vit_patches = samples * patches_per_sample * epochs
    fwd = 2.0
    bwd_llm = 4.0 if trainable_llm else 2.0
    bwd_vit = 4.0 if trainable_vit else (2.0 if trainable_llm else 0.0)
    re = 2.0 if recompute else 0.0
    per_llm_position = (fwd + bwd_llm + re) * lm.matmul_params
    # Attention scores + weighted values: 2 matmuls of 2·s·d FLOPs per token fwd, causal halves it.
    attn_llm = (fwd + bwd_llm + re) * 2 * lm.layers * lm.heads * lm.head_dim * per_sample / 2
    re_vit = re if bwd_vit else 0.0  # nothing flows back into a frozen ViT: no activations kept, none recomputed
    per_patch = (fwd + bwd_vit + re_vit) * vit.params
    attn_vit = (fwd + bwd_vit + re_vit) * 2 * vit.layers * vit.hidden * patches_per_sample
    flops = positions * per_llm_position + llm_tokens * attn_llm + vit_patches * (per_patch + attn_vit)
    gpu_seconds = flops / (PEAK_FLOPS[accelerator.lower()] * utilisation)
    packs = math.ceil(positions / seq_len)
    steps = math.ceil(packs / global_batch)
    return StageCost(name=name, samples=samples, text_tokens=text_tokens, image_tokens=image_tokens, epochs=epochs,
                     seq_len=seq_len, fill=fill, global_batch=global_batch, llm_tokens=llm_tokens,
                     vit_patches=vit_patches, packs=packs, steps=steps, flops=flops, gpu_hours=gpu_seconds / 3600,
                     days=gpu_seconds / 3600 / 24 / gpus)


def epochs_for_steps(steps: int, global_batch: int, seq_len: int, fill: float, samples: int,
                     tokens_per_sample: float) -> float:
    """Passes over the data that ``steps`` optimizer steps of ``global_batch`` packs make."""
    return steps * global_batch * seq_len * fill / (samples * tokens_per_sample)


def format_table(costs: list[StageCost], accelerator: str, gpus: int, utilisation: float) -> str:
    """A Markdown table, one row per stage, plus the total."""
    head = (f"plan on {gpus} x {accelerator.upper()} at {utilisation:.0%} utilisation\n"
            "| stage | samples | tokens/sample (text + image) | seq len | fill | epochs | global batch | steps | "
            "LLM tokens | ViT patches | PFLOP | GPU-hours | days |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"| {c.name} | {c.samples:,} | {c.text_tokens + c.image_tokens:,.0f} ({c.text_tokens:,.0f} + "
            f"{c.image_tokens:,.0f}) | {c.seq_len:,} | {c.fill:.3f} | {c.epochs:.3g} | {c.global_batch:,} | "
            f"{c.steps:,} | {c.llm_tokens:.3g} | {c.vit_patches:.3g} | {_num(c.flops / 1e15)} | "
            f"{_num(c.gpu_hours)} | {c.days:.3g} |" for c in costs]
    total = sum(c.gpu_hours for c in costs)
    return "\n".join([head, *rows, f"| total | | | | | | | | | | | {_num(total)} | {total / 24 / gpus:.3g} |"])


def _num(x: float) -> str:
    """Large figures with thousands separators, small ones (the CPU profiles) with 3 significant digits."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def compare_published(cost: StageCost, published: Published = PUBLISHED_8B_STAGE1_5) -> str:
    """One line holding a plan's GPU-hours against a published run's."""
    return (f"published {published.label}: {published.gpus} x {published.accelerator.upper()} x "
            f"{published.days} days = {published.gpu_hours:,.0f} GPU-hours; this plan: {cost.gpu_hours:,.0f} "
            f"GPU-hours (ratio {cost.gpu_hours / published.gpu_hours:.2f})")
