"""RICE ViT with the LLaVA-OV-1.5 patch merger: native resolution, many images per forward.

Read top to bottom: patches (already in 2×2-window order) are embedded by a bias-free conv; every image gets a
learned CLS token, whose rotary angle is learned too (``class_pos_emb``), while patches get 2D RoPE from their
(row, col). All images go through the blocks as one sequence with block-diagonal attention, so no image sees
another (:mod:`llava_ov.model.packed_attention`: varlen kernels on a GPU, windowed masks on the CPU). CLS
outputs are dropped and each 2×2 window of patch features is merged into one LLM token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llava_ov.model.configuration import RiceVisionConfig
from llava_ov.model.merger import PatchMerger
from llava_ov.model.packed_attention import packed_attention


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [T, heads, head_dim] by ``angles`` [T, head_dim/2] (duplicated to head_dim)."""
    emb = torch.cat((angles, angles), dim=-1)[:, None, :]
    return (x.float() * emb.cos() + rotate_half(x.float()) * emb.sin()).to(x.dtype)


def patch_rows_cols(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch of every image, in 2×2-window order: [P, 2]."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        pos = torch.stack([rows.permute(0, 2, 1, 3).reshape(-1), cols.permute(0, 2, 1, 3).reshape(-1)], -1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out)


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """2D RoPE frequencies: head_dim/4 per axis (rows, then columns) of base ``theta``: [head_dim / 4]."""
    half = head_dim // 2
    return 1.0 / theta ** (torch.arange(0, half, 2, device=device).float() / half)


def cls_sequences(patches: torch.Tensor, grid_thw: torch.Tensor, class_embedding: torch.Tensor,
                  class_pos_emb: torch.Tensor, inv_freq: torch.Tensor,
                  merge: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image as its own sequence, its CLS token first: (tokens [T, h], rotary angles [T, head_dim/2],
    ``cu_seqlens``). A patch's angles come from its (row, col); the CLS's angle is learned (``class_pos_emb``).
    Shared by the HF model and the megatron model, so the two can never disagree on positions."""
    pos = patch_rows_cols(grid_thw, merge).to(patches.device)
    patch_angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)
    sizes = (grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]).tolist()
    tokens, angles = [], []
    for feats, ang in zip(patches.split(sizes), patch_angles.split(sizes)):
        tokens += [class_embedding[None].to(feats.dtype), feats]
        angles += [class_pos_emb.float(), ang]
    lengths = torch.tensor([n + 1 for n in sizes], device=patches.device)
    return torch.cat(tokens), torch.cat(angles), F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def drop_cls(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` (first dim: tokens of :func:`cls_sequences`) without each image's CLS."""
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    keep[cu_seqlens[:-1].long()] = False
    return x[keep]


def segment_ids(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """Segment index of each of ``total`` tokens, from boundaries ``cu_seqlens`` (0, ..., total): [total]."""
    seg = torch.zeros(total, dtype=torch.long, device=device)
    seg[cu_seqlens[1:-1].long()] = 1
    return seg.cumsum(0)


class VisionAttention(nn.Module):
    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x).view(t, 3, self.heads, self.head_dim).unbind(1)
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        out = packed_attention(q, k, v, cu_seqlens, causal=False)  # per image: varlen kernels on GPU
        return self.proj(out.reshape(t, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), angles, cu_seqlens)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.channels, self.patch = cfg.in_channels, cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.view(-1, self.channels, self.patch, self.patch).to(self.proj.weight.dtype)
        return self.proj(x).flatten(1)


class RiceVisionModel(nn.Module):
    """``model.visual``: patches + grids in, one LLM-width feature per merged 2×2 window out."""

    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.patch_embed = PatchEmbed(cfg)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.class_pos_emb = nn.Parameter(torch.zeros(1, head_dim // 2))
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self.pre_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.merger = PatchMerger(cfg)

    def _inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        return rope_inv_freq(self.cfg.hidden_size // self.cfg.num_attention_heads, self.cfg.rope_theta, device)

    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute ``inv_freq`` (a non-persistent buffer: after a meta-device build or a fresh init)."""
        self.inv_freq = self._inv_freq(device)

    def encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per-patch features after the last block (CLS dropped), before the merger: [P, hidden]."""
        tokens, angles, cu_seqlens = cls_sequences(self.patch_embed(pixel_values), grid_thw, self.class_embedding,
                                                   self.class_pos_emb, self.inv_freq, self.cfg.spatial_merge_size)
        x = self.pre_layernorm(tokens)
        for block in self.blocks:
            x = block(x, angles, cu_seqlens)
        return drop_cls(x, cu_seqlens)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.merger(self.encode(pixel_values, grid_thw))
