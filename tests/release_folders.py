"""Base-model folders as their hubs ship them, for tests of the real profiles' import path.

A Qwen tokenizer with the released special-token ids (151643 ... 151656 after 151,643 ordinary tokens), a Qwen3
LLM and a RICE ViT (MLCD layout) of tiny widths, each saved by transformers itself (sharded safetensors with an
index when ``max_shard_size`` is small), which is the layout the hub folders have.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import MLCDVisionConfig, MLCDVisionModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.text.tokenizer import SPECIAL_TOKENS, wrap

QWEN_ORDINARY_TOKENS = 151_643  # the released Qwen vocabulary before its special tokens
QWEN3_VOCAB = 151_936  # the LLM's (padded) embedding rows

TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14)
TINY_LLM = dict(vocab_size=QWEN3_VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=12)


def write_qwen_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer whose special tokens have Qwen's ids (the ordinary ones are byte fillers)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab |= {f"<filler_{i}>": i for i in range(len(vocab), QWEN_ORDINARY_TOKENS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # in Qwen's order: ids 151643 ... 151656
    wrap(tok).save_pretrained(folder)


def write_qwen3(folder: Path, max_shard_size: str = "20MB", seed: int = 0) -> Qwen3ForCausalLM:
    """A tiny Qwen3 (the released vocabulary) saved with its tokenizer, as a Qwen3 hub folder is."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**TINY_LLM, bos_token_id=151643, eos_token_id=151645,
                                         max_position_embeddings=262144, tie_word_embeddings=False,
                                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0}))
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    write_qwen_tokenizer(folder)
    return model


def write_rice_vit(folder: Path, max_shard_size: str = "40KB", seed: int = 0) -> MLCDVisionModel:
    """A tiny RICE ViT in the MLCD layout (what the RICE-ViT hub folders hold)."""
    torch.manual_seed(seed)
    model = MLCDVisionModel(MLCDVisionConfig(**TINY_VIT, image_size=56, hidden_act="gelu"))
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return model
