"""Validation of one webdataset sample, shared by the embedded build and the released-data check.

A sample that fails is not an exception but a rejection with a reason, so a bad sample in a billion never
stops a build and never disappears silently: the caller records it in ``rejects.jsonl``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from llava_ov.data.shards import messages_text, sample_id

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # only decoders for these run on untrusted bytes
IMAGE_MEMBER = re.compile(r"^(\d+)\.(png|jpe?g|webp)$")
PLACEHOLDER = "<image>"


@dataclass
class ValidSample:
    sample_id: str
    meta: dict
    images: list[bytes]
    sizes: list[tuple[int, int]]


class Rejected(ValueError):
    """A sample that cannot be used; ``str(e)`` is the reason written to rejects.jsonl."""


def check_image(data: bytes, name: str) -> tuple[int, int]:
    """Decode an image fully (a truncated file fails only on load); returns (width, height)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                raise Rejected(f"image {name} is empty ({img.width}x{img.height})")
            return img.width, img.height
    except Image.DecompressionBombError as e:
        raise Rejected(f"image {name} is too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, Rejected):
            raise
        raise Rejected(f"image {name} is corrupt or truncated ({type(e).__name__}: {e})") from e


def check_messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise Rejected("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise Rejected(f"message {i} must be {{'role', 'content'}}")
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise Rejected(f"message {i} has role {m['role']!r}, expected {want!r} (turns must alternate, user "
                           f"first)")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise Rejected(f"message {i} ({m['role']}) has empty text")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" decodes to a lone surrogate
            raise Rejected(f"message {i} ({m['role']}) is not valid Unicode ({e})") from e
    if messages[-1]["role"] != "assistant":
        raise Rejected("conversation must end with an assistant turn")
    return messages


def validate(files: dict[str, bytes]) -> ValidSample:
    """Check one sample's members (``json`` and ``N.png``/``N.jpg``); raise :class:`Rejected` with a reason."""
    if "json" not in files:
        raise Rejected(f"no json member (members: {sorted(files)})")
    try:
        text = files["json"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(f"json is not UTF-8 ({e})") from e
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # also too deeply nested, or an integer past Python's digit limit
        raise Rejected(f"json does not parse ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(meta, dict):
        raise Rejected("json must be an object")
    messages = check_messages(meta.get("messages"))
    image_members = {}
    for name in files:
        match = IMAGE_MEMBER.match(name)
        if match:
            index = int(match.group(1))
            if index in image_members:
                raise Rejected(f"two members for image {index}: {image_members[index]!r} and {name!r}")
            image_members[index] = name
        elif name != "json":
            raise Rejected(f"unexpected member {name!r}")
    if sorted(image_members) != list(range(len(image_members))):
        raise Rejected(f"image members must be numbered 0..n-1, got {sorted(image_members)}")
    placeholders = sum(m["content"].count(PLACEHOLDER) for m in messages)
    if placeholders != len(image_members):
        raise Rejected(f"{placeholders} {PLACEHOLDER} placeholder(s) but {len(image_members)} image(s)")
    if any(PLACEHOLDER in m["content"] for m in messages if m["role"] == "assistant"):
        raise Rejected(f"{PLACEHOLDER} in an assistant turn")
    images = [files[image_members[i]] for i in range(len(image_members))]
    sizes = [check_image(img, image_members[i]) for i, img in enumerate(images)]
    return ValidSample(sample_id(images, messages_text(messages)), meta, images, sizes)
