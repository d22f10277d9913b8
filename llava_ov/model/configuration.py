"""Configuration of LLaVA-OneVision-1.5 (``model_type`` ``llavaonevision1_5``): a RICE ViT + merger + Qwen3."""

from __future__ import annotations

from transformers import PreTrainedConfig, Qwen3Config


class RiceVisionConfig(PreTrainedConfig):
    """RICE ViT (``MLCDVisionModel`` architecture) plus the patch merger into the LLM's width."""

    model_type = "llavaonevision1_5_vision"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    in_channels: int = 3
    spatial_merge_size: int = 2
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    out_hidden_size: int = 2560
    initializer_range: float = 0.02


class LlavaOV15Config(PreTrainedConfig):
    """The whole model: ``vision_config`` (:class:`RiceVisionConfig`) and ``text_config`` (``Qwen3Config``)."""

    model_type = "llavaonevision1_5"
    sub_configs_defaults = {"vision_config": RiceVisionConfig, "text_config": Qwen3Config}
    keys_to_ignore_at_inference = ["past_key_values"]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
