"""Deterministically rendered images: bar charts, tables, printed words (OCR), counting and grounding scenes.

Every image is drawn from values picked by a seeded generator, and its text is written from those same values,
so each caption and answer is true of its image by construction. Text uses the DejaVu fonts that ship with
matplotlib, so rendering is identical on every machine with the same package versions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from llava_ov.data.prompts import POOL_TEMPLATES
from llava_ov.data.sources import POOLS, Candidate, png_bytes, record

SIDE = 112
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 20),
           "purple": (140, 60, 170), "orange": (245, 140, 20)}
WORDS = ("apple", "river", "house", "cloud", "tiger", "bread", "chair", "light", "stone", "music", "green",
         "paper", "plant", "water", "smile", "train", "earth", "horse", "night", "sugar", "table", "dream",
         "ocean", "field", "glass", "money", "voice", "world", "heart", "north")
REGIONS = ("top left", "top right", "bottom left", "bottom right", "center")


@lru_cache(maxsize=8)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    return img, ImageDraw.Draw(img)


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: int, cy: int, r: int, colour: tuple) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def chart(rng: np.random.Generator, pool: str) -> Candidate:
    n = int(rng.integers(3, 6))
    labels = "ABCDE"[:n]
    values = rng.permutation(np.arange(1, 10))[:n].tolist()  # distinct values: one tallest bar
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img, draw = _canvas()
    width = (SIDE - 16) // n
    for i, (label, v) in enumerate(zip(labels, values)):
        x0 = 8 + i * width
        draw.rectangle((x0 + 3, SIDE - 18 - v * 9, x0 + width - 3, SIDE - 18), fill=COLOURS[colour])
        draw.text((x0 + width // 2 - 4, SIDE - 16), label, fill=(0, 0, 0), font=font(12))
    draw.line((6, SIDE - 18, SIDE - 6, SIDE - 18), fill=(0, 0, 0))
    top = labels[int(np.argmax(values))]
    low = labels[int(np.argmin(values))]
    return record("chart", pool, "chart_table", [png_bytes(img)], caption=f"A {colour} bar chart with {n} bars.",
                  description=f"A bar chart with {n} {colour} bars labelled {', '.join(labels)}. Bar {top} is the "
                              f"tallest and bar {low} is the shortest.",
                  qa=[("Which bar is the tallest?", top), ("Which bar is the shortest?", low),
                      ("How many bars are there?", str(n))],
                  question="Which bar is the tallest?", answer=top, choices=list(labels))


def table(rng: np.random.Generator, pool: str) -> Candidate:
    rows, cols = 2, 3
    cells = rng.integers(0, 10, (rows, cols)).tolist()
    img, draw = _canvas()
    cw, ch = (SIDE - 8) // cols, 30
    y0 = (SIDE - rows * ch) // 2
    for r in range(rows):
        for c in range(cols):
            x, y = 4 + c * cw, y0 + r * ch
            draw.rectangle((x, y, x + cw, y + ch), outline=(0, 0, 0))
            draw.text((x + cw // 2 - 5, y + 6), str(cells[r][c]), fill=(0, 0, 0), font=font(16))
    r, c = int(rng.integers(rows)), int(rng.integers(cols))
    value = str(cells[r][c])
    q = f"What number is in row {r + 1}, column {c + 1}?"
    text = "; ".join(f"row {i + 1} reads {' '.join(map(str, row))}" for i, row in enumerate(cells))
    return record("table", pool, "chart_table", [png_bytes(img)],
                  caption="A table of digits with 2 rows and 3 columns.",
                  description=f"A table with 2 rows and 3 columns of digits: {text}.",
                  qa=[(q, value), ("What is the sum of the first row?", str(sum(cells[0])))],
                  question=q, answer=value, choices=[str(d) for d in range(10)])


def ocr(rng: np.random.Generator, pool: str) -> Candidate:
    word = WORDS[int(rng.integers(len(WORDS)))]
    img, draw = _canvas()
    f = font(int(rng.integers(18, 24)), bold=bool(rng.integers(2)))
    w = draw.textlength(word, font=f)
    x = int(rng.integers(2, max(3, SIDE - int(w) - 2)))
    y = int(rng.integers(10, SIDE - 40))
    ink = (0, 0, 0) if rng.integers(2) else COLOURS["blue"]
    draw.text((x, y), word, fill=ink, font=f)
    choices = sorted({word, *(WORDS[i] for i in rng.choice(len(WORDS), 3, replace=False))}) if pool == "eval" else []
    return record("ocr", pool, "ocr", [png_bytes(img)], caption=POOL_TEMPLATES["align"]["ocr"].format(answer=word),
                  description=f"The printed word \"{word}\" in {'dark blue' if ink != (0, 0, 0) else 'black'} "
                              f"letters on a white background.",
                  qa=[("What word is written in the image?", word), ("How many letters does it have?", str(len(word)))],
                  question="What word is written in the image?", answer=word, choices=choices)


def counting(rng: np.random.Generator, pool: str) -> Candidate:
    kind = ("circle", "square", "triangle")[int(rng.integers(3))]
    n = int(rng.integers(1, 7))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img, draw = _canvas()
    cells = rng.permutation(9)[:n]  # one shape per cell of a 3x3 grid: never overlapping
    for cell in cells:
        cx = 19 + (cell % 3) * 37 + int(rng.integers(-4, 5))
        cy = 19 + (cell // 3) * 37 + int(rng.integers(-4, 5))
        _shape(draw, kind, cx, cy, 11, COLOURS[colour])
    plural = f"{n} {colour} {kind}{'s' if n > 1 else ''}"
    q = f"How many {kind}s are there?"
    return record("counting", pool, "grounding_counting", [png_bytes(img)], caption=f"{plural}.",
                  description=f"There {'are' if n > 1 else 'is'} {plural} spread over a white background, none of "
                              f"them overlapping.",
                  qa=[(q, str(n)), ("What colour are they?", colour)],
                  question=q, answer=str(n), choices=[str(k) for k in range(1, 7)])


def grounding(rng: np.random.Generator, pool: str) -> Candidate:
    kind = ("circle", "square", "triangle")[int(rng.integers(3))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    region = REGIONS[int(rng.integers(len(REGIONS)))]
    centre = {"top left": (28, 28), "top right": (84, 28), "bottom left": (28, 84), "bottom right": (84, 84),
              "center": (56, 56)}[region]
    img, draw = _canvas()
    _shape(draw, kind, centre[0] + int(rng.integers(-5, 6)), centre[1] + int(rng.integers(-5, 6)), 13,
           COLOURS[colour])
    q = f"Where is the {colour} {kind}?"
    return record("grounding", pool, "grounding_counting", [png_bytes(img)],
                  caption=f"A {colour} {kind} in the {region}.",
                  description=f"A single {colour} {kind} placed in the {region} of an otherwise empty white image.",
                  qa=[(q, region), ("What shape is it?", kind)],
                  question=q, answer=region, choices=sorted(REGIONS))


RENDERERS: dict[str, Callable[[np.random.Generator, str], Candidate]] = {
    "chart": chart, "table": table, "ocr": ocr, "counting": counting, "grounding": grounding}


def make_generator(name: str) -> Callable[[dict[str, int], np.random.Generator], Iterator[Candidate]]:
    """A source ``generate`` function for one renderer (each pool draws fresh images)."""
    render = RENDERERS[name]

    def generate(sizes: dict[str, int], rng: np.random.Generator) -> Iterator[Candidate]:
        for pool in POOLS:
            for _ in range(sizes.get(pool, 0)):
                yield render(rng, pool)

    return generate
