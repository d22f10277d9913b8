"""The published caption and image filters of the Mid-Training data, as optional per-pool checks.

The release's parser (``huggingface_data_parse.py``) keeps a caption of 50-3,500 characters that does not start
with a refusal and has no run of 8 identical words, and drops images whose decoded values are all 0. They are off
unless ``ingest.filters.<pool>`` turns them on, so a released pool can be reproduced exactly as published; a
filtered sample is a counted rejection with its reason, like any other.

The caption checks apply to every assistant turn (caption data has exactly one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llava_ov.data.validate import Rejected, ValidSample

WORD = re.compile(r"\b\w+\b")


@dataclass(frozen=True)
class Filters:
    """``ingest.filters.<pool>``; every check is off by default."""

    caption_chars: tuple[int, int] | None = None  # [min, max] characters, inclusive
    refusals: tuple[str, ...] = ()                # lower-case prefixes, matched case-insensitively
    repeated_words: int = 0                        # reject a run of this many identical consecutive words
    black_images: bool = False                     # reject an image whose decoded values are all 0

    @classmethod
    def from_params(cls, cfg: dict | None) -> "Filters":
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"caption_chars", "refusals", "repeated_words", "black_images"})
        if unknown:
            raise ValueError(f"ingest.filters: unknown filter(s) {unknown}; known: caption_chars, refusals, "
                             f"repeated_words, black_images")
        chars = cfg.get("caption_chars")
        return cls(caption_chars=tuple(chars) if chars else None,
                   refusals=tuple(p.lower() for p in cfg.get("refusals") or ()),
                   repeated_words=int(cfg.get("repeated_words") or 0), black_images=bool(cfg.get("black_images")))

    def check(self, sample: ValidSample) -> None:
        """Raise :class:`Rejected` with the reason if a filter drops ``sample``."""
        for m in sample.meta["messages"]:
            if m["role"] == "assistant":
                self._check_caption(m["content"])
        if self.black_images:
            for i, black in enumerate(sample.black):
                if black:
                    raise Rejected(f"image {i} is all black")

    def _check_caption(self, text: str) -> None:
        if self.caption_chars:
            low, high = self.caption_chars
            if len(text) < low:
                raise Rejected(f"caption shorter than {low} characters ({len(text)})")
            if len(text) > high:
                raise Rejected(f"caption longer than {high} characters ({len(text)})")
        lower = text.lower()
        refusal = next((p for p in self.refusals if lower.startswith(p)), None)
        if refusal:
            raise Rejected(f"caption starts with a refusal ({refusal!r})")
        n = self.repeated_words
        if n:
            words = WORD.findall(lower)
            run = 1
            for prev, word in zip(words, words[1:]):
                run = run + 1 if word == prev else 1
                if run >= n:
                    raise Rejected(f"caption repeats one word {n} times in a row ({word!r})")
