"""Cost plan: tokens, optimizer steps and GPU-hours per training stage, before anything runs.

The estimate is the usual dense-transformer count. Per trained LLM token the hardware does ``2N`` FLOPs forward,
``4N`` backward and, with full activation recompute (the published recipe), another ``2N`` forward, plus the
attention score/value products, which with packing scale with each *sample's* length, not the pack's. The ViT
adds the same terms over its patches (4 per visual token after the 2×2 merger) with full, bidirectional
attention per image. Hardware FLOPs divided by (peak × utilisation) give the time; with utilisation read as
hardware FLOPs utilisation (HFU) this matches how the published 45% figure was stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Dense bf16 peak FLOP/s of common accelerators (vendor figures, no sparsity).
PEAK_FLOPS = {"a800": 312e12, "a100": 312e12, "h100": 989e12, "h200": 989e12, "h800": 989e12}


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
    epochs: float
    llm_tokens: float
    vit_patches: float
    steps: int
    flops: float
    gpu_hours: float
    days: float


def stage_cost(name: str, lm: LMShape, vit: ViTShape, *, samples: int, text_tokens: float, image_tokens: float,
               epochs: float = 1.0, seq_len: int = 8192, global_batch: int = 16, gpus: int = 128,
               accelerator: str = "a800", utilisation: float = 0.45, recompute: bool = True,
               trainable_vit: bool = True, trainable_llm: bool = True) -> StageCost:
    """Estimate one stage. ``text_tokens``/``image_tokens`` are means per sample (image tokens after merging)."""
    per_sample = text_tokens + image_tokens
    llm_tokens = samples * per_sample * epochs
    patches_per_sample = image_tokens * vit.merge * vit.merge
    vit_patches = samples * patches_per_sample * epochs
    fwd = 2.0
    # Backward of a frozen tower still propagates activations (~2x fwd) but skips weight grads (~2x fwd).
    bwd_llm = 4.0 if trainable_llm else 2.0
    bwd_vit = 4.0 if trainable_vit else (2.0 if trainable_llm else 0.0)
    re = 2.0 if recompute else 0.0
    per_llm_token = (fwd + bwd_llm + re) * lm.matmul_params
    # Attention scores + weighted values: 2 matmuls of 2·s·d FLOPs per token fwd, causal halves it.
    attn_llm = (fwd + bwd_llm + re) * 2 * lm.layers * lm.heads * lm.head_dim * per_sample / 2
    per_patch = (fwd + bwd_vit + re) * vit.params
    attn_vit = (fwd + bwd_vit + re) * 2 * vit.layers * vit.hidden * patches_per_sample
    flops = llm_tokens * (per_llm_token + attn_llm) + vit_patches * (per_patch + attn_vit)
    peak = PEAK_FLOPS[accelerator.lower()]
    gpu_seconds = flops / (peak * utilisation)
    packs = math.ceil(llm_tokens / seq_len)
    steps = math.ceil(packs / global_batch)
    return StageCost(name=name, samples=samples, epochs=epochs, llm_tokens=llm_tokens, vit_patches=vit_patches,
                     steps=steps, flops=flops, gpu_hours=gpu_seconds / 3600, days=gpu_seconds / 3600 / 24 / gpus)


def format_table(costs: list[StageCost], accelerator: str, gpus: int, utilisation: float) -> str:
    head = (f"plan on {gpus} x {accelerator.upper()} at {utilisation:.0%} utilisation\n"
            f"| stage | samples | LLM tokens | ViT patches | steps | PFLOP | GPU-hours | days |\n"
            f"|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"| {c.name} | {c.samples:,} | {c.llm_tokens:.3g} | {c.vit_patches:.3g} | {c.steps:,} | "
            f"{c.flops / 1e15:,.0f} | {c.gpu_hours:,.0f} | {c.days:.2f} |" for c in costs]
    total = sum(c.gpu_hours for c in costs)
    return "\n".join([head, *rows, f"| total | | | | | | {total:,.0f} | {total / 24 / gpus:.2f} |"])
