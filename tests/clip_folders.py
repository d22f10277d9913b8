"""Tiny random-weight CLIP folders in the layout ``ImageTextEncoder.load`` reads, for the concept tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava_ov.concepts.encoder import ImageTextEncoder, clip_tokenizer
from llava_ov.text.tokenizer import train_bpe


def tiny_clip(caption: str = "a photo of a dog", text_width: int = 32, vision_width: int = 32,
              projection: int = 32, vocab_size: int | None = None, eos: int | None = None) -> ImageTextEncoder:
    """A 1-layer CLIP of 28-px images with a BPE trained on ``caption``; ``eos`` overrides where its text tower
    pools (default: the tokenizer's EOS, as a usable folder has it)."""
    tok = clip_tokenizer(train_bpe([caption] * 10, 300))
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=vocab_size or len(tok), hidden_size=text_width,
                                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id if eos is None else eos),
                        vision_config=dict(hidden_size=vision_width, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14),
                        projection_dim=projection)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return ImageTextEncoder(CLIPModel(config), tok, processor, 16)


def tiny_clip_folder(path: Path, **kwargs) -> Path:
    """:func:`tiny_clip` saved to ``path``."""
    tiny_clip(**kwargs).save(path)
    return path
