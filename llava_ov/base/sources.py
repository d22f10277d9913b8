"""Import the published base models from local folders (the 4b/8b profiles) and check they are the recipe's.

A wrong folder (a CLIP instead of RICE, a Qwen3-1.7B instead of 4B) would otherwise merge without complaint and
only fail hours into training; here it fails at once, naming the folder, the mismatching keys and the fix.
Weights load in float32 so the stage-0 reproduction checks compare like with like.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import MLCDVisionConfig, MLCDVisionModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.model.presets import PRESETS, RICE_VIT_L14

VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
LLM_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size")


def _folder(path: str, what: str, param: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{param}: {folder} has no config.json; put the {what} Hugging Face folder there "
                                f"(config.json + *.safetensors) or set {param}: pretrain for the tiny profile")
    return folder


def _mismatch(config: dict, expected: dict, keys: tuple[str, ...]) -> dict[str, tuple]:
    return {k: (config.get(k), expected[k]) for k in keys if config.get(k) != expected[k]}


def import_vit(path: str) -> MLCDVisionModel:
    """RICE-ViT-L/14 in the MLCD layout from ``path``; raises when its shape is not the recipe's."""
    folder = _folder(path, "RICE-ViT-L/14-560 (MLCD layout)", "vit_base.source")
    check_vit_config(MLCDVisionConfig.from_pretrained(folder).to_dict(), folder)
    return MLCDVisionModel.from_pretrained(folder, dtype=torch.float32).eval()


def check_vit_config(config: dict, folder: Path) -> None:
    """Raise unless ``config`` (an MLCD vision config) has RICE-ViT-L/14's shape."""
    bad = _mismatch(config, RICE_VIT_L14, VIT_KEYS)
    if bad:
        raise ValueError(f"vit_base.source {folder}: not RICE-ViT-L/14, (found, expected) = {bad}")


def import_llm(path: str, tokenizer_size: int) -> tuple[Qwen3ForCausalLM, str]:
    """A Qwen3 LLM from ``path`` matching the 4b or 8b preset (returned), whose vocab covers the tokenizer."""
    folder = _folder(path, "Qwen3-4B-Instruct-2507 or Qwen3-8B", "llm_base.source")
    preset = llm_preset(Qwen3Config.from_pretrained(folder).to_dict(), folder, tokenizer_size)
    return Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), preset


def llm_preset(config: dict, folder: Path, tokenizer_size: int) -> str:
    """The preset (``4b``/``8b``) whose LLM shape ``config`` has; raises when none, or the vocab is too small."""
    diffs = {name: _mismatch(config, PRESETS[name]["text"], LLM_KEYS) for name in ("4b", "8b")}
    matches = [name for name, bad in diffs.items() if not bad]
    if not matches:
        raise ValueError(f"llm_base.source {folder}: shape matches neither published LLM, (found, expected) = "
                         f"{diffs}")
    if config["vocab_size"] < tokenizer_size:
        raise ValueError(f"llm_base.source {folder}: vocab {config['vocab_size']} < the tokenizer's "
                         f"{tokenizer_size} tokens; use the tokenizer that came with this LLM")
    return matches[0]
