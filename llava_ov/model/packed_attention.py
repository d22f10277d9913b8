"""Attention over packed variable-length segments: one entry point for the HF ViT and the megatron layers.

A packed stream ``[t, heads, d]`` holds many segments (samples, or one image + its CLS) back to back, with
boundaries ``cu_seqlens`` (0, ..., t); a token attends only inside its own segment (causally for text). Which
kernel runs, first that applies:

1. CUDA, fp16/bf16, flash-attn installed (the ``gpu`` extra): ``flash_attn_varlen_func``.
2. CUDA, fp16/bf16: PyTorch's own flash kernel for packed sequences, ``torch.nn.attention.varlen.varlen_attn``
   (torch >= 2.10; its arguments changed between releases and are read from its signature).
3. CUDA otherwise (fp32, or dropout): SDPA on a nested jagged tensor (flash / memory-efficient kernels with the
   segment offsets, no mask).
4. CPU: SDPA over windows of whole segments, each with a block-diagonal mask of its own size (O(window²) memory,
   never O(t²)), the only place a mask is built.

No path builds a dense ``t × t`` mask on a GPU. Transformer Engine's fused THD attention (the TE layer spec) does
the same job inside megatron layers and does not come through here.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

try:  # the `gpu` extra; never required
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - torch < 2.10
    varlen_attn = None

_VARLEN_ARGS = set(inspect.signature(varlen_attn).parameters) if varlen_attn is not None else set()
HALF = (torch.float16, torch.bfloat16)


def backend(device: torch.device, dtype: torch.dtype, dropout: float = 0.0) -> str:
    """The kernel :func:`packed_attention` uses: ``flash_attn``, ``torch_varlen``, ``nested`` or ``cpu``."""
    if device.type != "cuda":
        return "cpu"
    if dtype in HALF and dropout == 0.0:
        if flash_attn_varlen_func is not None:
            return "flash_attn"
        if varlen_attn is not None:
            return "torch_varlen"
    return "nested"


def windows(cu_seqlens: list[int], min_window: int) -> list[tuple[int, int, list[int]]]:
    """Group consecutive segments into windows of at least ``min_window`` tokens (whole segments only).

    Returns ``(start, end, segment_lengths)`` per window.
    """
    out, start, lengths = [], cu_seqlens[0], []
    for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        lengths.append(b - a)
        if b - start >= min_window:
            out.append((start, b, lengths))
            start, lengths = b, []
    if lengths:
        out.append((start, cu_seqlens[-1], lengths))
    return out


def segment_mask(lengths: list[int], causal: bool, device: torch.device) -> torch.Tensor:
    """Boolean [n, n] mask (True = attend) for segments of the given lengths, block-diagonal, optionally causal."""
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask = mask.tril()
    return mask


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float,
          dropout: float) -> torch.Tensor:
    """[b, heads, s, d] × [b, groups, s, d] → [b, heads, s, d] (4-D inputs take SDPA's fast CPU path)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                          dropout_p=dropout, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def _windowed(q, k, v, cu: list[int], causal: bool, scale: float, dropout: float) -> torch.Tensor:
    longest = max(b - a for a, b in zip(cu[:-1], cu[1:]))
    outs = []
    for start, end, lengths in windows(cu, longest):
        qw, kw, vw = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        mask = None if len(lengths) == 1 else segment_mask(lengths, causal, q.device)
        outs.append(sdpa(qw, kw, vw, mask, causal, scale, dropout)[0].transpose(0, 1))
    return torch.cat(outs)


def _nested(q, k, v, cu_seqlens: torch.Tensor, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:  # jagged SDPA has no GQA: share each KV head with its query heads explicitly
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    offsets = cu_seqlens.to(device=q.device, dtype=torch.int64)
    qn, kn, vn = (torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qn, kn, vn, is_causal=causal, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).values()


def _torch_varlen(q, k, v, cu_seqlens: torch.Tensor, max_seqlen: int, causal: bool, scale: float) -> torch.Tensor:
    kwargs: dict = {}
    if "window_size" in _VARLEN_ARGS:  # torch >= 2.11: causal is the window (-1, 0)
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:  # torch 2.10
        kwargs["is_causal"] = causal
    if "scale" in _VARLEN_ARGS:
        kwargs["scale"] = scale
    else:
        q = q * (scale * math.sqrt(q.shape[-1]))
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in _VARLEN_ARGS:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, *,
                     causal: bool, scale: float | None = None, dropout: float = 0.0,
                     max_seqlen: int | None = None) -> torch.Tensor:
    """``q`` [t, heads, d], ``k``/``v`` [t, groups, d] → [t, heads, d]; attention never crosses a segment.

    ``cu_seqlens`` (int, [segments + 1]) are the boundaries; ``groups`` divides ``heads`` (GQA);
    ``max_seqlen`` (the longest segment) saves a device sync when the caller knows it.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    kind = backend(q.device, q.dtype, dropout)
    if kind == "cpu":
        return _windowed(q, k, v, cu_seqlens.tolist(), causal, scale, dropout)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    if max_seqlen is None:
        max_seqlen = int((cu[1:] - cu[:-1]).max())
    if kind == "flash_attn":
        return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=causal, softmax_scale=scale)
    if kind == "torch_varlen":
        return _torch_varlen(q, k, v, cu, max_seqlen, causal, scale)
    return _nested(q, k, v, cu, causal, scale, dropout)
