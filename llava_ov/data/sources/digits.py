"""scikit-learn's handwritten digits (UCI, 1,797 8x8 images), upscaled to the model's minimum image size.

Images are split once by index: every fifth digit is held out for ``eval``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from llava_ov.data.prompts import POOL_TEMPLATES
from llava_ov.data.sources import POOLS, Candidate, png_bytes, record, take

SOURCE = "digits"
SIDE = 56
QUESTION = "What digit is written here?"
CATEGORIES = {"align": "caption", "mid": "caption", "instruct": "math", "eval": "ocr"}


def _image(pixels: np.ndarray) -> bytes:
    grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
    return png_bytes(Image.fromarray(grey, "L").resize((SIDE, SIDE), Image.NEAREST).convert("RGB"))


def generate(sizes: dict[str, int], rng: np.random.Generator) -> Iterator[Candidate]:
    from sklearn.datasets import load_digits  # ~3 s to import: paid by the one task that builds this source

    digits = load_digits()
    items = [(i, int(digits.target[i])) for i in range(len(digits.target))]
    train = [it for it in items if it[0] % 5]
    held = [it for it in items if it[0] % 5 == 0]
    chosen = take(train, sizes, ("align", "mid", "instruct"), rng) | take(held, sizes, ("eval",), rng)
    for pool in POOLS:
        for index, label in chosen[pool]:
            k = int(rng.integers(1, 10)) if pool == "instruct" else 0  # drawn only where it is used
            yield record(SOURCE, pool, CATEGORIES[pool], [_image(digits.images[index])],
                         caption=POOL_TEMPLATES["align"][SOURCE].format(answer=label),
                         description=POOL_TEMPLATES["mid"][SOURCE].format(answer=label),
                         qa=[(QUESTION, str(label)), (f"What is that digit plus {k}?", str(label + k))],
                         question=QUESTION, answer=str(label), choices=[str(d) for d in range(10)])
