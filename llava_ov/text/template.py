"""Conversation → token ids and loss mask: the one function lengths, the loader and evaluation share.

The layout is Qwen2.5-VL's ChatML (the tokenizer's chat template renders the same text): the conversation's own
leading system turn or else a default one, then ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn, each ``<image>`` placeholder becoming
``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch + ``<|vision_end|>``. The loss mask covers the
assistant's content and its closing ``<|im_end|>``. Because every length, every pack and every training batch
goes through this function, the lengths the packer plans with are exactly the lengths the loader produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

from llava_ov.text.tokenizer import SYSTEM_PROMPT, special_ids

PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ChatEncoder:
    """Encodes conversations with one tokenizer; caches the ids of the fixed pieces."""

    tokenizer: PreTrainedTokenizerFast

    def __post_init__(self) -> None:
        ids = special_ids(self.tokenizer)
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_nl", self._text("\n"))
        object.__setattr__(self, "_system", [ids["<|im_start|>"], *self._text(f"system\n{SYSTEM_PROMPT}"),
                                             ids["<|im_end|>"], *self._text("\n")])
        object.__setattr__(self, "_roles", {r: [ids["<|im_start|>"], *self._text(f"{r}\n")]
                                            for r in ("system", "user", "assistant")})

    @property
    def image_pad_id(self) -> int:
        return self._ids["<|image_pad|>"]

    @property
    def im_end_id(self) -> int:
        return self._ids["<|im_end|>"]

    @property
    def pad_id(self) -> int:
        return self._ids["<|endoftext|>"]

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _content(self, content: str, image_tokens: list[int], next_image: int) -> tuple[list[int], int]:
        parts = content.split(PLACEHOLDER)
        ids = self._text(parts[0])
        for part in parts[1:]:
            if next_image >= len(image_tokens):
                raise ValueError(f"more {PLACEHOLDER} placeholders than images ({len(image_tokens)})")
            ids += [self._ids["<|vision_start|>"], *[self.image_pad_id] * image_tokens[next_image],
                    self._ids["<|vision_end|>"]]
            ids += self._text(part)
            next_image += 1
        return ids, next_image

    def encode(self, messages: list[dict], image_tokens: list[int],
               add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int32) and loss mask (bool) of a conversation; ``image_tokens[i]`` pads image ``i``."""
        ids: list[int] = [] if messages and messages[0]["role"] == "system" else list(self._system)
        mask: list[bool] = [False] * len(ids)
        next_image = 0
        for m in messages:
            body, next_image = self._content(m["content"], image_tokens, next_image)
            head = self._roles[m["role"]]
            train = m["role"] == "assistant"
            ids += head + body + [self.im_end_id] + self._nl
            mask += [False] * len(head) + [train] * (len(body) + 1) + [False] * len(self._nl)
        if next_image != len(image_tokens):
            raise ValueError(f"{len(image_tokens)} images but {next_image} {PLACEHOLDER} placeholders")
        if add_generation_prompt:
            ids += self._roles["assistant"]
            mask += [False] * len(self._roles["assistant"])
        return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)
