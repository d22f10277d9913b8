"""Configuration of LLaVA-OneVision-1.5 (``model_type`` ``llavaonevision1_5``): a RICE ViT + merger + Qwen3.

The field names and ``model_type`` strings are the released checkpoints' (``reference/recipe.md``): a released
``config.json`` reads into these classes unchanged, and what they write reads into the published modeling code.
The project's older names (``num_hidden_layers``, ``num_attention_heads``, ``out_hidden_size`` in the vision
config) are accepted as aliases, so code and folders that use them keep working.
"""

from __future__ import annotations

from transformers import PreTrainedConfig, Qwen3Config

# the published text config is written for transformers 4.x: RoPE as flat `rope_theta` + `rope_scaling`
_MROPE = "mrope"  # released Qwen2-VL-derived configs may say mrope; the LLM uses plain 1-D RoPE (recipe.md)


class RiceVisionConfig(PreTrainedConfig):
    """RICE ViT (``MLCDVisionModel`` architecture) plus the patch merger into the LLM's width (``rice_vit``)."""

    model_type = "rice_vit"
    base_config_key = "vision_config"
    attribute_map = {"num_hidden_layers": "depth", "num_attention_heads": "num_heads",
                     "out_hidden_size": "text_hidden_size"}

    depth: int = 24
    embed_dim: int | None = None  # the ViT width; the published config repeats it as hidden_size
    hidden_size: int = 1024
    hidden_act: str = "gelu"
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    text_hidden_size: int = 2560  # the merger's output: the LLM's width
    rope_theta: float = 10000.0  # 2D RoPE base; the published code fixes it at 10000

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        if self.embed_dim is None:
            self.embed_dim = self.hidden_size
        unsupported = {"embed_dim": (self.embed_dim, self.hidden_size), "temporal_patch_size": (self.temporal_patch_size, 1),
                       "hidden_act": (self.hidden_act, "gelu")}
        bad = {k: v for k, (v, want) in unsupported.items() if v != want}
        if bad:
            raise ValueError(f"vision_config {bad} is not a RICE ViT this model implements (embed_dim must equal "
                             f"hidden_size, temporal_patch_size 1, hidden_act gelu)")


class LlavaOV15TextConfig(Qwen3Config):
    """The Qwen3 LLM's config under the released ``model_type`` ``LLaVAOneVision1_5_text``.

    transformers 5 keeps RoPE in ``rope_parameters``; the published code reads flat ``rope_theta`` and silently
    falls back to 5e6 without it (wrong for the 8B, whose theta is 1e6), so :meth:`to_dict` writes both.
    """

    model_type = "LLaVAOneVision1_5_text"
    base_config_key = "text_config"

    def __post_init__(self, **kwargs) -> None:
        scaling = kwargs.get("rope_scaling")
        if isinstance(scaling, dict) and _MROPE in (scaling.get("type"), scaling.get("rope_type")):
            kwargs["rope_scaling"] = None  # what the published config class does with mrope: default RoPE
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        rope = dict(out.get("rope_parameters") or {})
        out["rope_theta"] = rope.pop("rope_theta", None)
        out["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        return out


class LlavaOV15Config(PreTrainedConfig):
    """The whole model: ``vision_config`` (:class:`RiceVisionConfig`), ``text_config`` (:class:`LlavaOV15TextConfig`)."""

    model_type = "llavaonevision1_5"
    sub_configs_defaults = {"vision_config": RiceVisionConfig, "text_config": LlavaOV15TextConfig}
    keys_to_ignore_at_inference = ["past_key_values"]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vocab_size: int | None = None  # the published top level repeats the LLM's vocabulary size
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        kwargs.pop("auto_map", None)  # released folders name remote code; this class never runs it
        super().__post_init__(**kwargs)
        self.vocab_size = self.text_config.vocab_size
        if self.vision_config.text_hidden_size != self.text_config.hidden_size:
            raise ValueError(f"vision_config.text_hidden_size {self.vision_config.text_hidden_size} (the merger's "
                             f"output) != text_config.hidden_size {self.text_config.hidden_size}")
