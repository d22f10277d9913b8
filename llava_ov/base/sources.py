"""Import the published base models from local folders (the 4b/8b profiles) and check they are the recipe's.

A wrong folder (a CLIP instead of RICE, a Qwen3-1.7B instead of 4B) would otherwise merge without complaint and
only fail hours into training; here it fails at once, naming the folder, the mismatching keys and the fix. The
profile names the size (``vit_base.size``, ``llm_base.size``) the folder must have. Folders are read as their
hubs ship them (sharded safetensors with an index, or one file) and strictly: transformers would initialise a
missing tensor at random with only a warning, so any missing, unexpected or mis-shaped tensor is an error.
Weights load in float32 so the stage-0 reproduction checks compare like with like.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import MLCDVisionConfig, MLCDVisionModel, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.model.family import ModelSize, family

VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
LLM_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size")


def _folder(path: str, what: str, param: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{param}: {folder} has no config.json; put the {what} Hugging Face folder there "
                                f"(config.json + *.safetensors) or set {param}: pretrain for the tiny profile")
    return folder


def _size(size: str, param: str) -> ModelSize:
    return family().size(size, param)


def _mismatch(config: dict, expected: dict, keys: tuple[str, ...]) -> dict[str, tuple]:
    return {k: (config.get(k), expected[k]) for k in keys if config.get(k) != expected[k]}


def load_strict(cls: type[PreTrainedModel], folder: Path, param: str) -> PreTrainedModel:
    """``cls.from_pretrained(folder)`` in float32, refusing a folder that leaves any tensor unfilled or unused."""
    model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    bad = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if bad:
        listed = {k: sorted(map(str, v))[:8] for k, v in bad.items()}
        raise ValueError(f"{param} {folder}: the weights do not fit its config.json ({listed}); nothing may be left "
                         f"randomly initialised: copy the complete checkpoint")
    return model.eval()


def import_vit(path: str, size: str) -> MLCDVisionModel:
    """The RICE ViT (MLCD layout) of model size ``size`` from ``path``; raises when its shape is another."""
    folder = _folder(path, "RICE-ViT (MLCD layout)", "vit_base.source")
    check_vit_config(MLCDVisionConfig.from_pretrained(folder).to_dict(), folder, size)
    return load_strict(family().vit_class, folder, "vit_base.source")


def check_vit_config(config: dict, folder: Path, size: str) -> None:
    """Raise unless ``config`` (an MLCD vision config) has the ViT shape of model size ``size``."""
    bad = _mismatch(config, _size(size, "vit_base.size").vision, VIT_KEYS)
    if bad:
        raise ValueError(f"vit_base.source {folder}: not the RICE ViT of size {size!r}, (found, expected) = {bad}")


def import_llm(path: str, size: str, tokenizer_size: int) -> Qwen3ForCausalLM:
    """The Qwen3 LLM of model size ``size`` from ``path``, whose vocabulary covers the tokenizer."""
    folder = _folder(path, "Qwen3 LLM", "llm_base.source")
    check_llm_config(Qwen3Config.from_pretrained(folder).to_dict(), folder, size, tokenizer_size)
    return load_strict(family().llm_class, folder, "llm_base.source")


def check_llm_config(config: dict, folder: Path, size: str, tokenizer_size: int) -> None:
    """Raise unless ``config`` has the LLM shape of model size ``size`` and a vocabulary covering the tokenizer."""
    bad = _mismatch(config, _size(size, "llm_base.size").text, LLM_KEYS)
    if bad:
        raise ValueError(f"llm_base.source {folder}: not the LLM of size {size!r}, (found, expected) = {bad}; set "
                         f"llm_base.size to the size of this folder")
    if config["vocab_size"] < tokenizer_size:
        raise ValueError(f"llm_base.source {folder}: vocab {config['vocab_size']} < the tokenizer's "
                         f"{tokenizer_size} tokens; use the tokenizer that came with this LLM")
