"""The LLaVA-OneVision-1.5 model for transformers (config, RICE ViT, merger, Qwen3 LM) ; sizes and classes in the family registry (``llava_ov.model.family``)."""

from llava_ov.model.configuration import LlavaOV15Config, RiceVisionConfig
from llava_ov.model.modeling import LlavaOV15ForConditionalGeneration, LlavaOV15Model

__all__ = ["LlavaOV15Config", "RiceVisionConfig", "LlavaOV15ForConditionalGeneration", "LlavaOV15Model"]
