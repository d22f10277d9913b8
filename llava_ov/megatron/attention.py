"""Core attention for packed sequences without Transformer Engine: SDPA over block-diagonal windows.

megatron-core's local ``DotProductAttention`` refuses ``packed_seq_params``; Transformer Engine's handles them
but needs CUDA. This module takes the same constructor and forward arguments as ``DotProductAttention``, so it
drops into a layer spec's ``core_attention``. With packed (``thd``) inputs it splits the flat token stream at
sample boundaries into windows of whole samples and runs ``scaled_dot_product_attention`` per window with a
block-diagonal (causal or full) mask, so attention never crosses samples and costs O(window²), not O(total²).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

CAUSAL = (AttnMaskType.causal, AttnMaskType.padding_causal)


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


class PackedSDPAttention(MegatronModule):
    """A drop-in ``core_attention`` (DotProductAttention's interface) that supports ``thd`` packed sequences."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("PackedSDPAttention does not support context parallelism; use the TE spec on GPUs")
        tp = config.tensor_model_parallel_size
        self.causal = attn_mask_type in CAUSAL
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              causal: bool) -> torch.Tensor:
        """q [b, heads, s, d], k/v [b, groups, s, d] → [b, heads, s, d] (4-D inputs take SDPA's fast CPU path)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                              dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
                                              enable_gqa=self.heads != self.groups)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: torch.Tensor | None = None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by PackedSDPAttention")
        causal = (attn_mask_type in CAUSAL) if attn_mask_type is not None else self.causal
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd":
                raise ValueError(f"packed sequences must use qkv_format 'thd', got {packed_seq_params.qkv_format!r}")
            return self._packed(query, key, value, packed_seq_params, causal)
        # [s, b, heads, d] (unpacked): megatron masks are True where attention is NOT allowed.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask = None if attention_mask is None else ~attention_mask.bool()
        out = self._sdpa(q, k, v, mask, causal)  # [b, heads, s, d]
        return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params: PackedSeqParams,
                causal: bool) -> torch.Tensor:
        """query [t, heads, d], key/value [t, groups, d] → [t, heads·d], attention inside each sample only."""
        cu = params.cu_seqlens_q.tolist()
        if cu != params.cu_seqlens_kv.tolist():
            raise ValueError("self-attention over packed sequences needs cu_seqlens_q == cu_seqlens_kv")
        longest = max(b - a for a, b in zip(cu[:-1], cu[1:]))
        outs = []
        for start, end, lengths in windows(cu, longest):
            q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
            mask = None if len(lengths) == 1 else segment_mask(lengths, causal, query.device)
            outs.append(self._sdpa(q, k, v, mask, causal)[0].transpose(0, 1))
        out = torch.cat(outs)
        return out.reshape(out.shape[0], -1)
