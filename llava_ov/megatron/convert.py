"""HF (released layout) <-> megatron-core state dicts for any tensor (TP) and pipeline (PP) split.

Pure tensor code, no process groups: :func:`rank_shard` builds one (pp_rank, tp_rank)'s state dict from a
reader of HF tensor *slices*, so a rank reads only the rows/columns it holds (a checkpoint on disk is read
through :class:`llava_ov.model.weights.SliceReader`); :func:`hf_to_megatron` does it for every rank from an
in-memory state dict; :func:`megatron_to_hf` inverts it exactly (bit for bit). The mapping follows the published
converter: Qwen3 q/k/v are regrouped per KV group (``[q heads of the group, k, v]`` per group) into
``linear_qkv``; gate/up are concatenated per TP rank into ``linear_fc1``; embeddings, QKV and fc1 split on dim 0,
``linear_proj`` and fc2 on dim 1; the vocabulary is padded to a multiple of 128 × TP; decoder layers are split
evenly across pipeline stages, with the ViT and merger on the first. The ViT's fused ``attn.qkv`` is regrouped
per head the same way (one KV group per head).

Keys use the local layer spec's names; with Transformer Engine (``te=True``) the norms fused into the next linear
are named the TE way (the recipe's ``linear_qkv.layer_norm_weight`` / ``mlp.linear_fc1.layer_norm_weight``), by
:func:`to_te_names` on the way in and :func:`from_te_names` on the way out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

VOCAB_MULTIPLE = 128
Shards = dict[tuple[int, int], dict[str, torch.Tensor]]  # (pp_rank, tp_rank) -> megatron state dict
# read(name, dim, start, stop): rows/columns [start, stop) of dimension ``dim`` of HF tensor ``name`` (whole
# tensor when start is None); .shape(name) gives its full shape without reading it
Read = Callable[..., torch.Tensor]


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary size padded to a multiple of 128 × TP (what megatron's embedding and output layer hold)."""
    multiple = VOCAB_MULTIPLE * tp
    return math.ceil(vocab / multiple) * multiple


@dataclass(frozen=True)
class Rule:
    """One megatron tensor: its key, the HF tensors it is made of, how it splits, and its pipeline stage."""

    key: str
    hf: tuple[str, ...]
    kind: str  # rep | col | row | vocab | qkv | fused_qkv | gate_up
    stage: int = 0
    heads: int = 0
    groups: int = 0


def _layers_per_stage(layers: int, pp: int) -> int:
    if layers % pp:
        raise ValueError(f"{layers} decoder layers do not split evenly over pipeline size {pp}; choose a PP that "
                         f"divides the layer count")
    return layers // pp


def rules(config, pp: int = 1) -> list[Rule]:
    """Every tensor of the model, for an HF ``LlavaOV15Config`` and a pipeline size."""
    v, t = config.vision_config, config.text_config
    out = [Rule("vision.patch_embed.weight", ("model.visual.patch_embed.proj.weight",), "rep"),
           Rule("vision.class_embedding", ("model.visual.class_embedding",), "rep"),
           Rule("vision.class_pos_emb", ("model.visual.class_pos_emb",), "rep")]
    for p in ("weight", "bias"):
        out.append(Rule(f"vision.pre_layernorm.{p}", (f"model.visual.pre_layernorm.{p}",), "rep"))
    for i in range(v.num_hidden_layers):
        m, h = f"vision.decoder.layers.{i}.", f"model.visual.blocks.{i}."
        for p in ("weight", "bias"):
            out += [Rule(f"{m}input_layernorm.{p}", (f"{h}norm1.{p}",), "rep"),
                    Rule(f"{m}self_attention.linear_qkv.{p}", (f"{h}attn.qkv.{p}",), "fused_qkv",
                         heads=v.num_attention_heads, groups=v.num_attention_heads),
                    Rule(f"{m}pre_mlp_layernorm.{p}", (f"{h}norm2.{p}",), "rep"),
                    Rule(f"{m}mlp.linear_fc1.{p}", (f"{h}mlp.fc1.{p}",), "col")]
        out += [Rule(f"{m}self_attention.linear_proj.weight", (f"{h}attn.proj.weight",), "row"),
                Rule(f"{m}self_attention.linear_proj.bias", (f"{h}attn.proj.bias",), "rep"),
                Rule(f"{m}mlp.linear_fc2.weight", (f"{h}mlp.fc2.weight",), "row"),
                Rule(f"{m}mlp.linear_fc2.bias", (f"{h}mlp.fc2.bias",), "rep")]
    out += [Rule("merger.ln_q.weight", ("model.visual.merger.ln_q.weight",), "rep"),
            Rule("merger.ln_q.bias", ("model.visual.merger.ln_q.bias",), "rep"),
            Rule("merger.mlp.linear_fc1.weight", ("model.visual.merger.mlp.0.weight",), "col"),
            Rule("merger.mlp.linear_fc1.bias", ("model.visual.merger.mlp.0.bias",), "col"),
            Rule("merger.mlp.linear_fc2.weight", ("model.visual.merger.mlp.2.weight",), "row"),
            Rule("merger.mlp.linear_fc2.bias", ("model.visual.merger.mlp.2.bias",), "rep"),
            Rule("language_model.embedding.word_embeddings.weight", ("model.language_model.embed_tokens.weight",),
                 "vocab")]
    per_stage = _layers_per_stage(t.num_hidden_layers, pp)
    for i in range(t.num_hidden_layers):
        stage, local = divmod(i, per_stage)
        m, h = f"language_model.decoder.layers.{local}.", f"model.language_model.layers.{i}."
        attn = f"{h}self_attn."
        out += [Rule(f"{m}input_layernorm.weight", (f"{h}input_layernorm.weight",), "rep", stage),
                Rule(f"{m}self_attention.linear_qkv.weight",
                     (f"{attn}q_proj.weight", f"{attn}k_proj.weight", f"{attn}v_proj.weight"), "qkv", stage,
                     heads=t.num_attention_heads, groups=t.num_key_value_heads),
                Rule(f"{m}self_attention.q_layernorm.weight", (f"{attn}q_norm.weight",), "rep", stage),
                Rule(f"{m}self_attention.k_layernorm.weight", (f"{attn}k_norm.weight",), "rep", stage),
                Rule(f"{m}self_attention.linear_proj.weight", (f"{attn}o_proj.weight",), "row", stage),
                Rule(f"{m}pre_mlp_layernorm.weight", (f"{h}post_attention_layernorm.weight",), "rep", stage),
                Rule(f"{m}mlp.linear_fc1.weight", (f"{h}mlp.gate_proj.weight", f"{h}mlp.up_proj.weight"),
                     "gate_up", stage),
                Rule(f"{m}mlp.linear_fc2.weight", (f"{h}mlp.down_proj.weight",), "row", stage)]
    out += [Rule("language_model.decoder.final_layernorm.weight", ("model.language_model.norm.weight",), "rep",
                 pp - 1),
            Rule("language_model.output_layer.weight", ("lm_head.weight",), "vocab", pp - 1)]
    return out


def _group_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """[q heads; k; v] (HF) → for each KV group [its q heads, its k, its v] (megatron)."""
    per = heads // groups
    return torch.cat([q.reshape(groups, per * (q.shape[0] // heads), *q.shape[1:]),
                      k.reshape(groups, k.shape[0] // groups, *k.shape[1:]),
                      v.reshape(groups, v.shape[0] // groups, *v.shape[1:])], dim=1).reshape(-1, *q.shape[1:])


def _ungroup_qkv(x: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    head_dim = x.shape[0] // (heads + 2 * groups)
    per = heads // groups
    g = x.reshape(groups, (per + 2) * head_dim, *x.shape[1:])
    q, k, v = g.split([per * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(-1, *x.shape[1:]), k.reshape(-1, *x.shape[1:]), v.reshape(-1, *x.shape[1:]))


def _chunk(n: int, tp: int, rank: int) -> tuple[int, int]:
    """[start, stop) of ``torch.chunk(tp)``'s piece ``rank`` of a dimension of size ``n``."""
    size = math.ceil(n / tp)
    return min(n, rank * size), min(n, (rank + 1) * size)


def split_rank(rule: Rule, read: Read, tp: int, rank: int) -> torch.Tensor:
    """TP rank ``rank``'s megatron tensor of one rule, reading only the HF slices it is made of."""
    name = rule.hf[0]
    if rule.kind == "rep":
        return read(name)
    if rule.kind in ("col", "row"):
        dim = 0 if rule.kind == "col" else 1
        return read(name, dim, *_chunk(read.shape(name)[dim], tp, rank))
    if rule.kind == "vocab":
        vocab, *rest = read.shape(name)
        per = padded_vocab(vocab, tp) // tp
        start, stop = min(vocab, rank * per), min(vocab, (rank + 1) * per)
        real = read(name, 0, start, stop)
        return torch.cat([real, real.new_zeros(per - real.shape[0], *rest)])
    if rule.kind in ("qkv", "fused_qkv"):
        if rule.groups % tp:
            raise ValueError(f"{rule.key}: {rule.groups} KV groups do not split over TP={tp}")
        per_group, groups = rule.heads // rule.groups, rule.groups // tp
        first = rank * groups
        if rule.kind == "qkv":
            head_dim = read.shape(name)[0] // rule.heads
            q = read(rule.hf[0], 0, first * per_group * head_dim, (first + groups) * per_group * head_dim)
            k, v = (read(n, 0, first * head_dim, (first + groups) * head_dim) for n in rule.hf[1:])
        else:  # one [q; k; v] tensor, one KV group per head
            width = read.shape(name)[0] // 3
            head_dim = width // rule.heads
            q, k, v = (read(name, 0, part * width + first * head_dim, part * width + (first + groups) * head_dim)
                       for part in range(3))
        return _group_qkv(q, k, v, per_group * groups, groups)
    if rule.kind == "gate_up":
        return torch.cat([read(n, 0, *_chunk(read.shape(n)[0], tp, rank)) for n in rule.hf])
    raise ValueError(f"unknown split kind {rule.kind!r}")


def merge(rule: Rule, shards: list[torch.Tensor], vocab: int) -> list[torch.Tensor]:
    """The ``tp`` megatron shards of one rule → its HF tensors (inverse of :func:`split`)."""
    if rule.kind == "rep":
        for i, s in enumerate(shards[1:], 1):
            if not torch.equal(s, shards[0]):
                raise ValueError(f"{rule.key}: replicated tensor differs between TP rank 0 and {i}")
        return [shards[0]]
    if rule.kind == "col":
        return [torch.cat(shards, 0)]
    if rule.kind == "row":
        return [torch.cat(shards, 1)]
    if rule.kind == "vocab":
        return [torch.cat(shards, 0)[:vocab]]
    if rule.kind in ("qkv", "fused_qkv"):
        q, k, v = _ungroup_qkv(torch.cat(shards, 0), rule.heads, rule.groups)
        return [torch.cat([q, k, v])] if rule.kind == "fused_qkv" else [q, k, v]
    if rule.kind == "gate_up":
        halves = [s.chunk(2, 0) for s in shards]
        return [torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])]
    raise ValueError(f"unknown split kind {rule.kind!r}")


def _on_stage(rule: Rule, pp: int) -> int:
    return rule.stage if rule.stage < pp else pp - 1


class _InMemory:
    """A :data:`Read` over an in-memory HF state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def __call__(self, name: str, dim: int = 0, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        tensor = self.state[name]
        return tensor if start is None else tensor.narrow(dim, start, stop - start)


def rank_shard(config, read: Read, tp: int, pp: int, pp_rank: int, tp_rank: int,
               te: bool = False) -> dict[str, torch.Tensor]:
    """The megatron state dict of (``pp_rank``, ``tp_rank``), reading only this rank's slices through ``read``."""
    out = {rule.key: split_rank(rule, read, tp, tp_rank).contiguous()
           for rule in rules(config, pp) if _on_stage(rule, pp) == pp_rank}
    return to_te_names(out) if te else out


def hf_to_megatron(hf: dict[str, torch.Tensor], config, tp: int = 1, pp: int = 1, te: bool = False) -> Shards:
    """One megatron state dict per (pp_rank, tp_rank) from an HF state dict of ``config``."""
    table = rules(config, pp)
    wanted = {k for r in table for k in r.hf}
    missing, extra = sorted(wanted - set(hf)), sorted(set(hf) - wanted)
    if missing or extra:
        raise ValueError(f"HF state dict does not match the LLaVA-OV-1.5 layout: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    read = _InMemory(hf)
    return {(p, r): rank_shard(config, read, tp, pp, p, r, te) for p in range(pp) for r in range(tp)}


def megatron_to_hf(shards: Shards, config, tp: int = 1, pp: int = 1, te: bool = False) -> dict[str, torch.Tensor]:
    """The HF state dict from the per-(pp_rank, tp_rank) megatron state dicts (exact inverse)."""
    if te:
        shards = {position: from_te_names(state) for position, state in shards.items()}
    vocab = config.text_config.vocab_size
    out = {}
    for rule in rules(config, pp):
        stage = _on_stage(rule, pp)
        try:
            parts = [shards[(stage, r)][rule.key] for r in range(tp)]
        except KeyError as e:
            raise ValueError(f"megatron checkpoint lacks {rule.key} on pipeline stage {stage}: {e}") from e
        for key, tensor in zip(rule.hf, merge(rule, parts, vocab)):
            # a copy that owns its storage: vocabulary rows and q/k/v come out as views of bigger tensors
            out[key] = tensor.clone(memory_format=torch.contiguous_format)
    return out


TE_NAMES = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
            "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def to_te_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Local-spec layer keys → Transformer Engine's fused-norm keys (``...linear_qkv.layer_norm_weight``)."""
    out = {}
    for key, value in state.items():
        for local, te in TE_NAMES.items():
            if f".{local}" in key and ".layers." in key:
                key = key.replace(f".{local}", f".{te}")
        out[key] = value
    return out


def from_te_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_te_names`."""
    out = {}
    for key, value in state.items():
        for local, te in TE_NAMES.items():
            if f".{te}" in key:
                key = key.replace(f".{te}", f".{local}")
        out[key] = value
    return out
