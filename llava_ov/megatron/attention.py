"""Core attention for packed sequences without Transformer Engine: a drop-in ``DotProductAttention``.

megatron-core's local ``DotProductAttention`` refuses ``packed_seq_params``; Transformer Engine's handles them
but needs CUDA. This module takes the same constructor and forward arguments as ``DotProductAttention``, so it
drops into a layer spec's ``core_attention``. Packed (``thd``) inputs go through
:func:`llava_ov.model.packed_attention.packed_attention` (flash-attn / PyTorch varlen / jagged SDPA on a GPU,
windowed block-diagonal SDPA on the CPU), so attention never crosses samples and never builds a dense mask on a
GPU.
"""

from __future__ import annotations

import math

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from llava_ov.model.packed_attention import packed_attention, sdpa

CAUSAL = (AttnMaskType.causal, AttnMaskType.padding_causal)


class PackedSDPAttention(MegatronModule):
    """A drop-in ``core_attention`` (DotProductAttention's interface) that supports ``thd`` packed sequences."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("PackedSDPAttention does not support context parallelism; use the TE spec on GPUs")
        self.causal = attn_mask_type in CAUSAL
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

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
        out = sdpa(q, k, v, mask, causal, self.scale, self._dropout())  # [b, heads, s, d]
        return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)

    def _dropout(self) -> float:
        return self.dropout if self.training else 0.0

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params: PackedSeqParams,
                causal: bool) -> torch.Tensor:
        """query [t, heads, d], key/value [t, groups, d] → [t, heads·d], attention inside each sample only."""
        if params.cu_seqlens_kv is not params.cu_seqlens_q and not torch.equal(params.cu_seqlens_q,
                                                                               params.cu_seqlens_kv):
            raise ValueError("self-attention over packed sequences needs cu_seqlens_q == cu_seqlens_kv")
        out = packed_attention(query, key, value, params.cu_seqlens_q, causal=causal, scale=self.scale,
                               dropout=self._dropout(), max_seqlen=params.max_seqlen_q)
        return out.reshape(out.shape[0], -1)
