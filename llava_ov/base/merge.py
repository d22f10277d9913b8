"""Stage 0: merge a RICE ViT (MLCD layout) and a Qwen3 LLM into one LLaVA-OV-1.5 checkpoint.

The ViT's separate q/k/v are fused into ``attn.qkv`` and its names mapped to the released layout; its
``post_layernorm`` is dropped (the merger has its own LayerNorm). The LLM is copied under
``model.language_model.``; ``lm_head`` comes from the LLM (or its embeddings when it ties them). The merger is
initialised fresh. Two checks gate the result, each with the right pass condition: the merged ViT must reproduce
the source ViT's patch features, and the merged LLM the source LLM's logits.
"""

from __future__ import annotations

import re

import torch
from transformers import MLCDVisionModel, Qwen3ForCausalLM

from llava_ov.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration

_VIT_RENAMES = [
    (r"^embeddings\.patch_embedding\.", "model.visual.patch_embed.proj."),
    (r"^embeddings\.class_embedding$", "model.visual.class_embedding"),
    (r"^class_pos_emb$", "model.visual.class_pos_emb"),
    (r"^pre_layrnorm\.", "model.visual.pre_layernorm."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"model.visual.blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"model.visual.blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"model.visual.blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"model.visual.blocks.\1.mlp."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def convert_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLCD-layout ViT weights → ``model.visual.*`` (q/k/v fused); raises on any key it does not know.

    Accepts the hub checkpoints' ``vision_model.`` prefix and transformers 5's unprefixed names alike.
    """
    out, qkv = {}, {}
    for key, value in state.items():
        key = key.removeprefix("vision_model.")
        if key.startswith("post_layernorm."):
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _VIT_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise KeyError(f"ViT key {key!r} has no mapping to the LLaVA-OV-1.5 layout")
    for (layer, kind), parts in qkv.items():
        out[f"model.visual.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


# keys of a Qwen3 config that describe the checkpoint, not the architecture, and stay behind at the merge
_LLM_META_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype")


def merged_config(vit: MLCDVisionModel, llm: Qwen3ForCausalLM, token_ids: dict[str, int],
                  merge_size: int) -> LlavaOV15Config:
    """The merged model's config: the ViT's and the LLM's own shapes, ``merge_size`` from ``image.merge_size``.

    The text config is the source LLM's whole config (positions, RoPE, bos/eos ids as the base model has them);
    where the base model names no bos/eos, the tokenizer's ``<|endoftext|>`` / ``<|im_end|>`` are used.
    """
    v = vit.config
    vision = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, depth=v.num_hidden_layers,
                  num_heads=v.num_attention_heads, patch_size=v.patch_size, in_channels=v.num_channels,
                  layer_norm_eps=v.layer_norm_eps, rope_theta=v.rope_parameters["rope_theta"],
                  spatial_merge_size=merge_size, text_hidden_size=llm.config.hidden_size)
    text = {k: val for k, val in llm.config.to_dict().items() if k not in _LLM_META_KEYS}
    text["tie_word_embeddings"] = False  # a tying base LLM's embeddings are copied into the VLM's own lm_head
    if text.get("bos_token_id") is None:
        text["bos_token_id"] = token_ids["bos_token_id"]
    if text.get("eos_token_id") is None:
        text["eos_token_id"] = token_ids["eos_token_id"]
    top = {k: token_ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                     "vision_end_token_id")}
    return LlavaOV15Config(vision_config=vision, text_config=text, tie_word_embeddings=False, **top)


def merge(vit: MLCDVisionModel, llm: Qwen3ForCausalLM, token_ids: dict[str, int], seed: int,
          merge_size: int) -> LlavaOV15ForConditionalGeneration:
    """The stage-0 model; ``token_ids`` holds the special-token ids (image/video pads, vision start/end, bos/eos)."""
    torch.manual_seed(seed)
    model = LlavaOV15ForConditionalGeneration(merged_config(vit, llm, token_ids, merge_size))
    state = convert_vit(vit.state_dict())
    for key, value in llm.state_dict().items():
        if key.startswith("model."):
            state["model.language_model." + key[len("model."):]] = value
    state["lm_head.weight"] = (llm.state_dict().get("lm_head.weight")
                               if not llm.config.tie_word_embeddings else llm.model.embed_tokens.weight)
    merger = model.model.visual.merger
    merger.reset_parameters(std=0.02)
    state.update({f"model.visual.merger.{k}": v for k, v in merger.state_dict().items()})
    model.load_state_dict(state, strict=True)  # every released key filled, nothing left over
    return model.eval()


@torch.no_grad()
def check_vit(vit: MLCDVisionModel, merged: LlavaOV15ForConditionalGeneration, images: torch.Tensor,
              merge_size: int) -> float:
    """Max |difference| between the source ViT's patch features and the merged ViT's (same images)."""
    ref = vit(pixel_values=images).last_hidden_state[:, 1:]  # drop CLS; raster order
    b, _, h, w = images.shape
    p = vit.config.patch_size
    gh, gw = h // p, w // p
    x = images.view(b, 3, gh // merge_size, merge_size, p, gw // merge_size, merge_size, p)
    pixel_values = x.permute(0, 2, 5, 3, 6, 1, 4, 7).reshape(-1, 3 * p * p)  # 2x2-window order
    grid = torch.tensor([[1, gh, gw]] * b)
    ours = merged.model.visual.encode(pixel_values, grid).view(b, gh // merge_size, gw // merge_size,
                                                               merge_size, merge_size, -1)
    ours = ours.permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)  # back to raster order
    return float((ours - ref).abs().max())


@torch.no_grad()
def check_llm(llm: Qwen3ForCausalLM, merged: LlavaOV15ForConditionalGeneration, input_ids: torch.Tensor) -> float:
    """Max |difference| between the source LLM's logits and the merged model's on text-only input."""
    return float((merged(input_ids=input_ids).logits - llm(input_ids=input_ids).logits).abs().max())
