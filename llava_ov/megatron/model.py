"""LLaVA-OneVision-1.5 on megatron-core: RICE ViT (a TransformerBlock), patch merger and Qwen3 (a GPTModel).

The module tree mirrors the HF model (``llava_ov.model``) so conversion is a key-by-key mapping:

- ``vision``: bias-free patch conv, learned CLS token and CLS rotary angle, ``pre_layernorm``, then a megatron
  ``TransformerBlock`` with full (non-causal) attention that is block-diagonal over images through
  ``PackedSeqParams`` (each image + its CLS is one ``thd`` segment) and 2D RoPE given as per-token angles.
- ``merger``: ``ln_q`` then a megatron ``MLP`` (column-parallel fc1, GELU, row-parallel fc2) over 2×2 windows.
- ``language_model``: a ``GPTModel`` with RMSNorm, SwiGLU, QK-layernorm and 1-D RoPE; packed text attends per
  sample through ``PackedSeqParams`` (positions restart per sample).

The Transformer Engine layer spec is used when ``transformer_engine`` imports (GPUs: fused THD attention, its
fused-norm parameter names, see :func:`llava_ov.megatron.convert.to_te_names`); otherwise the local spec with
:class:`~llava_ov.megatron.attention.PackedSDPAttention` as core attention and torch norms that also work under
sequence parallelism. How the model computes (precision, activation recompute) is a :class:`Compute`; how it is
split (TP/PP/CP, sequence parallelism) a :class:`Parallel`. Sequence and context parallelism split the LM only:
the ViT and merger run whole on every rank of the first pipeline stage, as in the published recipe.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlock, TransformerBlockSubmodules,
                                                        get_num_layers_to_build)
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear,
                                           copy_to_tensor_model_parallel_region,
                                           gather_from_sequence_parallel_region,
                                           scatter_to_sequence_parallel_region, vocab_parallel_cross_entropy)
from torch import nn

from llava_ov.megatron.attention import PackedSDPAttention
from llava_ov.megatron.precision import Precision
from llava_ov.model.rice_vit import cls_sequences, drop_cls, rope_inv_freq

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Parallel:
    """How the model is split, and which pipeline stage this rank holds. ``whole_group``: a process group of this
    rank alone, which the ViT's attention gets as its context-parallel group when the LM runs CP (cp > 1): the ViT
    sees whole images on every rank."""

    tp: int = 1
    pp: int = 1
    pp_rank: int = 0
    cp: int = 1
    sequence_parallel: bool = False
    whole_group: object = field(default=None, compare=False)

    @property
    def first(self) -> bool:
        return self.pp_rank == 0

    @property
    def last(self) -> bool:
        return self.pp_rank == self.pp - 1


@dataclass(frozen=True)
class Compute:
    """How the model computes: precision (``train.common.dtype``) and activation recompute
    (``train.common.recompute``: ``full`` recomputes every layer in backward, as the published scripts do;
    ``selective`` only core attention; ``none`` keeps every activation)."""

    precision: Precision = Precision("fp32")
    recompute: str = "none"

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"params.yaml train.common.recompute is {self.recompute!r}; expected one of {RECOMPUTE}")

    def config(self) -> dict:
        """``TransformerConfig`` keys of this precision and recompute policy."""
        out = self.precision.transformer()
        if self.recompute == "full":
            out.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        elif self.recompute == "selective":
            out.update(recompute_granularity="selective", recompute_modules=["core_attn"])
        return out


def _common(parallel: Parallel, compute: Compute, *, split: bool) -> dict:
    """Keys every sub-model's config shares. ``split``: the LM (pipeline/sequence/context-split); the ViT and
    merger are not (first pipeline stage, whole sequence on every rank)."""
    return dict(tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp if split else 1,
                context_parallel_size=parallel.cp if split else 1,
                variable_seq_lengths=split and parallel.cp > 1,  # CP pads each sample: lengths vary by micro-batch
                sequence_parallel=parallel.sequence_parallel and split,
                use_cpu_initialization=not torch.cuda.is_available(),
                hidden_dropout=0.0, attention_dropout=0.0, bias_dropout_fusion=False, apply_rope_fusion=False,
                masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
                calculate_per_token_loss=True, init_method_std=0.02, **compute.config())


def text_config(hf_text, parallel: Parallel, compute: Compute = Compute()) -> TransformerConfig:
    """megatron TransformerConfig of the Qwen3 LM from a transformers ``Qwen3Config``."""
    return TransformerConfig(
        num_layers=hf_text.num_hidden_layers, hidden_size=hf_text.hidden_size,
        ffn_hidden_size=hf_text.intermediate_size, num_attention_heads=hf_text.num_attention_heads,
        num_query_groups=hf_text.num_key_value_heads, kv_channels=hf_text.head_dim,
        normalization="RMSNorm", layernorm_epsilon=hf_text.rms_norm_eps, qk_layernorm=True,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=False,
        **_common(parallel, compute, split=True))


def vision_config(hf_vision, parallel: Parallel, compute: Compute = Compute()) -> TransformerConfig:
    """megatron TransformerConfig of the RICE ViT (never pipeline-split: it lives on the first stage)."""
    return TransformerConfig(
        num_layers=hf_vision.num_hidden_layers, hidden_size=hf_vision.hidden_size,
        ffn_hidden_size=hf_vision.intermediate_size, num_attention_heads=hf_vision.num_attention_heads,
        kv_channels=hf_vision.hidden_size // hf_vision.num_attention_heads, normalization="LayerNorm",
        layernorm_epsilon=hf_vision.layer_norm_eps, gated_linear_unit=False, activation_func=F.gelu,
        add_bias_linear=True, add_qkv_bias=True, **_common(parallel, compute, split=False))


def merger_config(hf_vision, parallel: Parallel, compute: Compute = Compute()) -> TransformerConfig:
    """The merger MLP: (merge² · ViT width) → GELU → LLM width, with biases."""
    merged = hf_vision.hidden_size * hf_vision.spatial_merge_size ** 2
    return TransformerConfig(
        # no attention here; megatron only requires the head count to divide by TP
        num_layers=1, hidden_size=hf_vision.out_hidden_size, ffn_hidden_size=merged, num_attention_heads=parallel.tp,
        gated_linear_unit=False, activation_func=F.gelu, add_bias_linear=True,
        **_common(parallel, compute, split=False))


class TorchNorm:
    """megatron's ``WrappedTorchNorm`` (torch ``LayerNorm``/``RMSNorm`` by ``config.normalization``) without its
    refusal of sequence parallelism. Under SP each TP rank normalises its own slice of the sequence, so a norm's
    weights get partial gradients on each rank; marking them ``sequence_parallel`` makes megatron's
    ``finalize_model_grads`` sum them over TP, which is what Apex's and TE's norms do."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused) -> nn.Module:
        norm_cls = nn.RMSNorm if config.normalization == "RMSNorm" else nn.LayerNorm
        norm = norm_cls(hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def layer_spec(causal: bool, rms: bool, qk_layernorm: bool) -> ModuleSpec:
    """A transformer layer spec: TE when installed, else local with packed-sequence attention and torch norms."""
    if HAVE_TE:
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm" if rms else "LayerNorm")
        layer, attention = spec.submodules, spec.submodules.self_attention.submodules
        attention.core_attention = PackedSDPAttention
        layer.input_layernorm = layer.pre_mlp_layernorm = TorchNorm
        if qk_layernorm:
            attention.q_layernorm = attention.k_layernorm = TorchNorm
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.causal if causal
                                             else AttnMaskType.no_mask}
    return spec


def block_spec(config: TransformerConfig, layer: ModuleSpec) -> ModuleSpec | TransformerBlockSubmodules:
    """This pipeline stage's block: its layers and (local spec) a final norm that works under SP."""
    if HAVE_TE:
        return layer
    return TransformerBlockSubmodules(layer_specs=[layer] * get_num_layers_to_build(config), layer_norm=TorchNorm)


def packed_params(cu_seqlens: torch.Tensor, longest: int | None = None,
                  padded: torch.Tensor | None = None) -> PackedSeqParams:
    """``thd`` PackedSeqParams for self-attention over segments with boundaries ``cu_seqlens`` (``longest``: the
    longest segment, when the caller knows it without a device sync; ``padded``: the boundaries of the segments
    padded for context parallelism, see :func:`llava_ov.train.batches.cp_layout`)."""
    cu = cu_seqlens.to(torch.int32)
    bounds = cu if padded is None else padded.to(torch.int32)
    if longest is None:
        longest = int((bounds[1:] - bounds[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest, cu_seqlens_q_padded=None if padded is None else bounds,
                           cu_seqlens_kv_padded=None if padded is None else bounds)


def device() -> torch.device:
    """Where this rank computes: its GPU (``llava_ov.train.distributed.init`` selected it by local rank) or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class RiceVision(MegatronModule):
    """``model.visual`` without the merger: patches + grids → per-patch features (CLS dropped)."""

    def __init__(self, hf_vision, parallel: Parallel, compute: Compute) -> None:
        config = vision_config(hf_vision, parallel, compute)
        super().__init__(config=config)
        head_dim = config.kv_channels
        self.merge = hf_vision.spatial_merge_size
        self.channels, self.patch = hf_vision.in_channels, hf_vision.patch_size
        self.patch_embed = nn.Conv2d(self.channels, config.hidden_size, self.patch, self.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.class_pos_emb = nn.Parameter(torch.zeros(1, head_dim // 2))
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, hf_vision.rope_theta), persistent=False)
        self.pre_layernorm = TorchNorm(config, config.hidden_size, eps=config.layernorm_epsilon)
        groups = None
        if parallel.cp > 1:  # the rotary code takes the CP group's size from the groups it is given
            groups = ProcessGroupCollection.use_mpu_process_groups()
            groups.cp = parallel.whole_group
        self.decoder = TransformerBlock(config, block_spec(config, layer_spec(causal=False, rms=False,
                                                                              qk_layernorm=False)),
                                        post_layer_norm=False, pg_collection=groups)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        x = pixel_values.view(-1, self.channels, self.patch, self.patch).to(self.patch_embed.weight.dtype)
        tokens, angles, cu = cls_sequences(self.patch_embed(x).flatten(1), grid_thw, self.class_embedding,
                                           self.class_pos_emb, self.inv_freq, self.merge)
        hidden = self.pre_layernorm(tokens)[:, None]  # [t, 1, h]
        # Each TP rank rotates only its heads: sum the angle gradients over TP (the learned CLS angle trains).
        angles = copy_to_tensor_model_parallel_region(angles)
        freqs = torch.cat([angles, angles], dim=-1)[:, None, None, :]  # [t, 1, 1, head_dim]
        longest = int((cu[1:] - cu[:-1]).max())
        hidden = self.decoder(hidden, attention_mask=None, rotary_pos_emb=freqs,
                              packed_seq_params=packed_params(cu, longest))
        return drop_cls(hidden, cu)[:, 0]


class Merger(MegatronModule):
    """``model.visual.merger``: LayerNorm per patch, concatenate each 2×2 window, MLP into the LLM's width."""

    def __init__(self, hf_vision, parallel: Parallel, compute: Compute) -> None:
        config = merger_config(hf_vision, parallel, compute)
        super().__init__(config=config)
        self.merged = config.ffn_hidden_size
        self.ln_q = TorchNorm(config, hf_vision.hidden_size, eps=hf_vision.layer_norm_eps)
        self.mlp = MLP(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
                       input_size=self.merged, ffn_hidden_size=self.merged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, bias = self.mlp(self.ln_q(x).view(-1, self.merged))
        return out + bias if bias is not None else out


class LlavaOVMegatron(MegatronModule):
    """One pipeline stage of LLaVA-OV-1.5: ViT + merger on the first stage, LM layers split across stages.

    Built on this rank's device (:func:`device`) with parameters in the precision's dtype (buffers such as the
    ViT's rotary frequencies stay float32). ``te_names``: its layers carry Transformer Engine's parameter names.
    """

    def __init__(self, hf_config, parallel: Parallel, padded_vocab: int, compute: Compute = Compute()) -> None:
        config = text_config(hf_config.text_config, parallel, compute)
        super().__init__(config=config)
        self.parallel = parallel
        self.te_names = HAVE_TE
        self.model_type = ModelType.encoder_or_decoder
        self.image_token_id = hf_config.image_token_id
        self.vocab_size, self.padded_vocab = hf_config.text_config.vocab_size, padded_vocab
        self.pre_process, self.post_process = parallel.first, parallel.last
        if self.pre_process:
            self.vision = RiceVision(hf_config.vision_config, parallel, compute)
            self.merger = Merger(hf_config.vision_config, parallel, compute)
        text = hf_config.text_config
        self.language_model = GPTModel(
            config, block_spec(config, layer_spec(causal=True, rms=True, qk_layernorm=True)),
            vocab_size=padded_vocab, max_sequence_length=text.max_position_embeddings, pre_process=parallel.first,
            post_process=parallel.last, share_embeddings_and_output_weights=False, position_embedding_type="rope",
            rotary_base=int(text.rope_parameters["rope_theta"]), parallel_output=True)
        self._logit_rows: torch.Tensor | None = None
        if self.post_process:
            self.language_model.output_layer.register_forward_pre_hook(self._only_logit_rows)
        self.to(device())
        for param in self.parameters():  # megatron layers are built in params_dtype; the ViT's own modules are not
            param.data = param.data.to(config.params_dtype)

    def _only_logit_rows(self, module, args):
        """Output-layer pre-hook: keep only the hidden states of the positions whose logits are wanted (the
        labelled ones in a loss forward), so the vocabulary projection (about half the LM's FLOPs at the tiny
        shape, and the largest activation at any shape) runs on the assistant tokens, not on every packed token.

        Under sequence parallelism each TP rank holds a slice of the sequence and the output layer all-gathers
        its input: the slices are gathered here first, the rows picked, padded to a multiple of TP and
        re-scattered (the caller drops the padding rows)."""
        rows = self._logit_rows
        if rows is None:
            return None
        hidden = args[0]
        if not self.config.sequence_parallel:
            return (hidden[rows], *args[1:])
        picked = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)[rows]
        pad = -picked.shape[0] % self.parallel.tp
        picked = torch.cat([picked, picked.new_zeros(pad, *picked.shape[1:])])
        return (scatter_to_sequence_parallel_region(picked), *args[1:])

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline stages after the first receive hidden states instead of token ids."""
        self.language_model.set_input_tensor(input_tensor)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
              cp_index: torch.Tensor | None = None) -> torch.Tensor:
        """[s, 1, h] token embeddings with merged image features in the ``<|image_pad|>`` slots. The slots are
        filled on the whole sequence; then context parallelism keeps this rank's positions (``cp_index``) and
        sequence parallelism this TP rank's slice of them."""
        sp = self.config.sequence_parallel
        embeds = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [s(/TP), 1, h]
        slots = (input_ids == self.image_token_id).transpose(0, 1)  # [s, 1]
        n_slots = int(slots.sum())
        if pixel_values is None and n_slots:
            raise ValueError(f"batch has {n_slots} <|image_pad|> tokens but no pixel_values")
        if pixel_values is None and cp_index is None:
            return embeds
        whole = gather_from_sequence_parallel_region(embeds, tensor_parallel_output_grad=False) if sp else embeds
        if pixel_values is not None:
            features = self.merger(self.vision(pixel_values, image_grid_thw)).to(embeds.dtype)
            if features.shape[0] != n_slots:
                raise ValueError(f"{features.shape[0]} merged image patches (grids {image_grid_thw.tolist()}) "
                                 f"but {n_slots} <|image_pad|> tokens: the packed batch and the image processor "
                                 f"disagree")
            whole = whole.masked_scatter(slots[..., None], features)
        if cp_index is not None:
            whole = whole.index_select(0, cp_index)
        return scatter_to_sequence_parallel_region(whole) if sp else whole

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, cu_seqlens_padded: torch.Tensor | None = None,
                cp_index: torch.Tensor | None = None) -> torch.Tensor:
        """Packed micro-batch flattened to one row: ``input_ids``/``labels``/``loss_mask`` [1, t] (labels shifted).

        On the last stage: per-token losses [1, t] when ``labels`` is given (with ``loss_mask``, logits are
        computed only where it is true and the other positions hold 0), else logits [1, t, vocab/TP], or with
        ``loss_mask`` the logits of its true positions only [1, n, vocab/TP]. Other stages return hidden states.
        Under context parallelism (:func:`llava_ov.train.batches.local_inputs`) ``input_ids`` is the whole padded
        sequence, ``labels``/``loss_mask`` and the result cover this rank's positions ``cp_index`` only.
        """
        local = input_ids.shape[1] if cp_index is None else cp_index.shape[0]
        if self.config.sequence_parallel and local % self.parallel.tp:
            raise ValueError(f"sequence parallelism splits the {local} packed tokens over TP={self.parallel.tp}: "
                             f"use a pack capacity x micro_batch divisible by TP")
        decoder_input = self.embed(input_ids, pixel_values, image_grid_thw, cp_index) if self.pre_process else None
        rows = loss_mask[0].nonzero()[:, 0] if self.post_process and loss_mask is not None else None
        self._logit_rows = rows
        try:
            out = self.language_model(input_ids=None, position_ids=None, attention_mask=None,
                                      decoder_input=decoder_input,
                                      packed_seq_params=packed_params(cu_seqlens, padded=cu_seqlens_padded))
        finally:
            self._logit_rows = None
        if not self.post_process:
            return out
        logits = self._mask_padding(out)
        if rows is not None:
            logits = logits[:, :rows.shape[0]]  # sequence parallelism padded the picked rows to a multiple of TP
        if labels is None:
            return logits
        if rows is None:
            return vocab_parallel_cross_entropy(logits.float(), labels)
        losses = vocab_parallel_cross_entropy(logits.float(), labels[:, rows])
        return torch.zeros(labels.shape, dtype=losses.dtype, device=losses.device).index_copy(1, rows, losses)

    def _mask_padding(self, logits: torch.Tensor) -> torch.Tensor:
        """-inf on this rank's padded-vocabulary columns: padding (128·TP) never changes the loss or softmax."""
        if self.padded_vocab == self.vocab_size:
            return logits
        local = logits.shape[-1]
        first = parallel_state.get_tensor_model_parallel_rank() * local
        padded = torch.arange(first, first + local, device=logits.device) >= self.vocab_size
        return logits.masked_fill(padded, float("-inf"))
