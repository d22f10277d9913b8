"""Base-model pretraining: it learns (loss falls) and is deterministic (same seed → identical weights)."""

import io

import numpy as np
import torch
from PIL import Image

from llava_ov.base.llm_pretrain import pretrain_llm
from llava_ov.base.vit_pretrain import pretrain_vit
from llava_ov.text.tokenizer import train_bpe
from llava_ov.vision.image_processing import ImageProcessor

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 20, (56, 56, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_vit_pretraining_learns_and_is_deterministic():
    torch.set_num_threads(1)
    images = [_png(rgb, i) for i in range(16) for rgb in COLOURS.values()]
    captions = [f"A {name} square." for _ in range(16) for name in COLOURS]
    cfg = dict(image_side=56, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               epochs=4, batch_size=16, lr=0.003)
    processor = ImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    a, metrics = pretrain_vit(images, captions, cfg, processor, seed=0)
    b, _ = pretrain_vit(images, captions, cfg, processor, seed=0)
    assert _state_equal(a, b)
    assert metrics["clusters"] == 4 and metrics["final_loss"] < metrics["first_loss"]


def test_llm_pretraining_learns_and_is_deterministic():
    torch.set_num_threads(1)
    docs = [f"The {c} {s} is {n} pixels wide." for c in COLOURS for s in ("circle", "square", "triangle")
            for n in ("ten", "twenty")] * 4
    tokenizer = train_bpe(docs, vocab_size=400)
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rope_theta=10000.0, seq_len=32,
               batch_size=8, steps=30, lr=0.01)
    ids = [tokenizer.encode(d, add_special_tokens=False) for d in docs]
    a, metrics = pretrain_llm(tokenizer, ids, cfg, seed=0)
    b, _ = pretrain_llm(tokenizer, ids, cfg, seed=0)
    assert _state_equal(a, b)
    assert metrics["final_loss"] < 0.6 * metrics["first_loss"]
