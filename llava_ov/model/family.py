"""The model-family registry (torchtitan's "model spec"): what a family is, separate from any train loop.

A family names, in one place, everything the stages need to know about a model besides its weights:

- the shapes of each size (``sizes``: the RICE ViT's and the Qwen3 LLM's, as the base models' own configs spell
  them), with the base-model folders they come from;
- the Hugging Face classes: the base models the ``vit_base``/``llm_base`` stages import and the merged model;
- the released on-disk <-> in-memory tensor names (:mod:`llava_ov.model.weights`) and the config aliases of the
  released format (:class:`~llava_ov.model.configuration.RiceVisionConfig`);
- the HF <-> Megatron conversion rules and the megatron model (named by import path, so nothing imports megatron
  until training needs it).

Adding a size (another base LLM) is one :class:`ModelSize` entry here plus a profile file that names it
(``vit_base.size`` / ``llm_base.size``); ``tests/test_family.py`` shows it for Qwen3-1.7B.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from transformers import MLCDVisionModel, PreTrainedModel, Qwen3ForCausalLM

from llava_ov.model.configuration import LlavaOV15Config, RiceVisionConfig
from llava_ov.model.modeling import LlavaOV15ForConditionalGeneration
from llava_ov.model.weights import MEMORY_TO_RELEASE, RELEASE_TO_MEMORY


@dataclass(frozen=True)
class ModelSize:
    """One size of a family: ViT and LLM shapes (base-model config keys) and where the base models come from."""

    vision: dict
    text: dict
    vit_folder: str = ""  # the published base models' folder names (the profiles put them under models/)
    llm_folder: str = ""
    published: bool = False  # a size of the published recipe (4B, 8B), or one the project adds


@dataclass(frozen=True)
class ModelFamily:
    name: str
    sizes: dict[str, ModelSize]
    model_class: type[PreTrainedModel]
    config_class: type
    vit_class: type[PreTrainedModel]
    llm_class: type[PreTrainedModel]
    release_to_memory: tuple = RELEASE_TO_MEMORY
    memory_to_release: tuple = MEMORY_TO_RELEASE
    vision_config_aliases: dict = field(default_factory=lambda: dict(RiceVisionConfig.attribute_map))
    megatron_rules: str = ""  # "module:function": HF <-> Megatron conversion rules for a config and PP size
    megatron_model: str = ""  # "module:class": the family on megatron-core

    def size(self, name: str, param: str = "size") -> ModelSize:
        if name not in self.sizes:
            raise ValueError(f"{param} {name!r} is not a size of model family {self.name!r} ({sorted(self.sizes)}); "
                             f"add its shapes as a ModelSize in llava_ov/model/family.py")
        return self.sizes[name]

    def resolve(self, path: str) -> Callable[..., Any]:
        """The object behind a ``module:name`` path (imported only when asked for)."""
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    def build_config(self, size: str, vision: dict | None = None, text: dict | None = None,
                     **token_ids: int) -> LlavaOV15Config:
        """The merged model's config of a size, with optional overrides and the special-token ids."""
        shape = self.size(size)
        text_cfg = {**shape.text, **(text or {}), "tie_word_embeddings": False}  # the VLM's lm_head is its own
        vision_cfg = {**shape.vision, **(vision or {}), "out_hidden_size": text_cfg["hidden_size"]}
        return self.config_class(vision_config=vision_cfg, text_config=text_cfg, tie_word_embeddings=False,
                                 **token_ids)


RICE_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, spatial_merge_size=2, layer_norm_eps=1e-5, rope_theta=10000.0)
QWEN3_COMMON = dict(head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, attention_bias=False,
                    tie_word_embeddings=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151645)
RICE_FOLDER = "rice-vit-large-patch14-560"

LLAVA_OV_1_5 = ModelFamily(
    name="llava_ov_1_5",
    sizes={
        # published: RICE-ViT-L/14-560 + Qwen3-4B-Instruct-2507 (262,144 positions, theta 5e6) / Qwen3-8B (40,960, 1e6)
        "4b": ModelSize(RICE_VIT_L14, dict(QWEN3_COMMON, num_hidden_layers=36, hidden_size=2560,
                                           intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8,
                                           rope_theta=5_000_000.0, max_position_embeddings=262144),
                        RICE_FOLDER, "Qwen3-4B-Instruct-2507", published=True),
        "8b": ModelSize(RICE_VIT_L14, dict(QWEN3_COMMON, num_hidden_layers=36, hidden_size=4096,
                                           intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
                                           rope_theta=1_000_000.0, max_position_embeddings=40960),
                        RICE_FOLDER, "Qwen3-8B", published=True),
        # not published: the same recipe on Qwen3-1.7B (tied embeddings; stage0 unties them into lm_head)
        "1.7b": ModelSize(RICE_VIT_L14, dict(QWEN3_COMMON, num_hidden_layers=28, hidden_size=2048,
                                             intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                                             rope_theta=1_000_000.0, max_position_embeddings=40960,
                                             tie_word_embeddings=True),
                          RICE_FOLDER, "Qwen3-1.7B"),
        # the embedded CPU profile (its vit_base/llm_base pretrain these shapes from params)
        "tiny": ModelSize(dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                               patch_size=14, spatial_merge_size=2, layer_norm_eps=1e-5, rope_theta=10000.0),
                          dict(num_hidden_layers=4, hidden_size=192, intermediate_size=512, num_attention_heads=6,
                               num_key_value_heads=2, head_dim=32, vocab_size=4096, rms_norm_eps=1e-6,
                               attention_bias=False, tie_word_embeddings=False, hidden_act="silu",
                               max_position_embeddings=4096, rope_theta=10000.0)),
    },
    model_class=LlavaOV15ForConditionalGeneration,
    config_class=LlavaOV15Config,
    vit_class=MLCDVisionModel,
    llm_class=Qwen3ForCausalLM,
    megatron_rules="llava_ov.megatron.convert:rules",
    megatron_model="llava_ov.megatron.model:LlavaOVMegatron",
)

FAMILIES = {LLAVA_OV_1_5.name: LLAVA_OV_1_5}


def family(name: str = LLAVA_OV_1_5.name) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_config(size: str, vision: dict | None = None, text: dict | None = None, **token_ids: int) -> LlavaOV15Config:
    """:meth:`ModelFamily.build_config` of the LLaVA-OV-1.5 family."""
    return LLAVA_OV_1_5.build_config(size, vision, text, **token_ids)
