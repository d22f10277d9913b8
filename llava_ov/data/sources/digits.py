"""scikit-learn's handwritten digits (UCI, 1,797 8x8 images), upscaled to the model's minimum image size.

Images are split once by index: every fifth digit is held out for ``eval``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from llava_ov.data.sources import Candidate, multi_turn, one_turn, png_bytes, take

SOURCE = "digits"
SIDE = 56


def _image(pixels: np.ndarray) -> bytes:
    grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
    return png_bytes(Image.fromarray(grey, "L").resize((SIDE, SIDE), Image.NEAREST).convert("RGB"))


def generate(sizes: dict[str, int], rng: np.random.Generator) -> Iterator[Candidate]:
    digits = load_digits()
    items = [(i, int(digits.target[i])) for i in range(len(digits.target))]
    train = [it for it in items if it[0] % 5]
    held = [it for it in items if it[0] % 5 == 0]
    chosen = take(train, sizes, ("align", "mid", "instruct"), rng) | take(held, sizes, ("eval",), rng)
    for pool in ("align", "mid", "instruct", "eval"):
        for index, label in chosen[pool]:
            data = _image(digits.images[index])
            if pool == "align":
                yield Candidate(SOURCE, pool, "caption", one_turn("Give a short caption.",
                                                                  f"A handwritten digit {label}."), [data])
            elif pool == "mid":
                yield Candidate(SOURCE, pool, "caption", one_turn(
                    "Describe the image in detail.",
                    f"A low-resolution scan of the handwritten digit {label}, dark ink on a white background, "
                    f"enlarged from 8 by 8 pixels."), [data])
            elif pool == "instruct":
                k = int(rng.integers(1, 10))
                yield Candidate(SOURCE, pool, "math", multi_turn([
                    ("What digit is written here?", str(label)),
                    (f"What is that digit plus {k}?", str(label + k))]), [data])
            else:
                yield Candidate(SOURCE, pool, "ocr", one_turn("What digit is written here?", str(label)),
                                [data], {"task": "digits", "answer": str(label),
                                         "choices": [str(d) for d in range(10)]})
