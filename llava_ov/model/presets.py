"""Model shapes: ``4b`` and ``8b`` from the published recipe, ``tiny`` for the embedded CPU profile.

The 4B's LLM is Qwen3-4B-Instruct-2507 (262,144 positions, RoPE theta 5e6), the 8B's Qwen3-8B (40,960, 1e6);
both carry Qwen's bos/eos ids (151643 / 151645) in the text config, as the released folders do.
"""

from __future__ import annotations

from llava_ov.model.configuration import LlavaOV15Config

RICE_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, spatial_merge_size=2, layer_norm_eps=1e-5, rope_theta=10000.0)
QWEN3_COMMON = dict(head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, attention_bias=False,
                    tie_word_embeddings=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151645)

PRESETS: dict[str, dict] = {
    "4b": dict(vision=RICE_VIT_L14, text=dict(QWEN3_COMMON, num_hidden_layers=36, hidden_size=2560,
                                                intermediate_size=9728, num_attention_heads=32,
                                                num_key_value_heads=8, rope_theta=5_000_000.0,
                                                max_position_embeddings=262144)),
    "8b": dict(vision=RICE_VIT_L14, text=dict(QWEN3_COMMON, num_hidden_layers=36, hidden_size=4096,
                                                intermediate_size=12288, num_attention_heads=32,
                                                num_key_value_heads=8, rope_theta=1_000_000.0,
                                                max_position_embeddings=40960)),
    "tiny": dict(vision=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                             patch_size=14, spatial_merge_size=2, layer_norm_eps=1e-5, rope_theta=10000.0),
                 text=dict(num_hidden_layers=4, hidden_size=192, intermediate_size=512, num_attention_heads=6,
                           num_key_value_heads=2, head_dim=32, vocab_size=4096, rms_norm_eps=1e-6,
                           attention_bias=False, tie_word_embeddings=False, hidden_act="silu",
                           max_position_embeddings=4096, rope_theta=10000.0)),
}


def build_config(preset: str, vision: dict | None = None, text: dict | None = None, **token_ids: int) -> LlavaOV15Config:
    """A config from a preset, with optional overrides of vision/text keys and the special-token ids."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    p = PRESETS[preset]
    text_cfg = {**p["text"], **(text or {})}
    vision_cfg = {**p["vision"], **(vision or {}), "out_hidden_size": text_cfg["hidden_size"]}
    return LlavaOV15Config(vision_config=vision_cfg, text_config=text_cfg, tie_word_embeddings=False, **token_ids)
