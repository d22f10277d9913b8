"""Validation of one sample in the internal schema, shared by the embedded build and the released-data ingest.

A sample that fails is not an exception but a rejection with a reason, so a bad sample in a billion never
stops a build and never disappears silently: the caller records it in ``rejects.jsonl``. A kept sample is one
that every later stage can use: ``lengths``, packing and training never meet a sample they must refuse (an image
``smart_resize`` cannot resize, a role the chat template cannot render, a special token inside the text).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from llava_ov.data.shards import messages_text, sample_id
from llava_ov.vision.image_processing import MAX_ASPECT_RATIO, strict_decoding

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # only decoders for these run on untrusted bytes
IMAGE_MEMBER = re.compile(r"^(\d+)\.(png|jpe?g|webp)$")
PLACEHOLDER = "<image>"
# Text like "<|image_pad|>" tokenizes as the special token itself: a caption holding one would add image tokens
# without pixels, or end a turn early. Every Qwen special token has this shape.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")


@dataclass
class ValidSample:
    sample_id: str
    meta: dict
    images: list[bytes]
    sizes: list[tuple[int, int]]
    black: list[bool]  # per image: every decoded value is 0 (the published all-black image filter)


class Rejected(ValueError):
    """A sample that cannot be used; ``str(e)`` is the reason written to rejects.jsonl, ``sample_id`` its id when
    it validated (a filter or an overlap check rejected it) and so has one."""

    sample_id: str = ""


def check_image(data: bytes, name: str) -> tuple[int, int, bool]:
    """Decode an image fully (a truncated file fails only on load); returns (width, height, all black)."""
    with strict_decoding():
        return _decode(data, name)


def _decode(data: bytes, name: str) -> tuple[int, int, bool]:
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width < 1 or height < 1:
                raise Rejected(f"image {name} is empty ({width}x{height})")
            if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:  # checked before decoding a thin strip
                raise Rejected(f"image {name} has an aspect ratio over {MAX_ASPECT_RATIO} ({width}x{height}; "
                               f"smart_resize refuses it)")
            img.load()
            extrema = img.getextrema()
            bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
            return width, height, all(lo == 0 and hi == 0 for lo, hi in bands)
    except Image.DecompressionBombError as e:
        raise Rejected(f"image {name} is too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, Rejected):
            raise
        raise Rejected(f"image {name} is corrupt or truncated ({type(e).__name__}: {e})") from e


def check_messages(messages: object) -> list[dict]:
    """One optional leading ``system`` turn, then ``user``/``assistant`` turns alternating, ending with assistant."""
    if not isinstance(messages, list) or not messages:
        raise Rejected("'messages' must be a non-empty list")
    first = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise Rejected(f"message {i} must be {{'role', 'content'}}")
        want = "system" if i < first else ("user" if (i - first) % 2 == 0 else "assistant")
        if m["role"] != want:
            raise Rejected(f"message {i} has role {m['role']!r}, expected {want!r} (turns must alternate, user "
                           f"first, after at most one leading system turn)")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise Rejected(f"message {i} ({m['role']}) has empty text")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" decodes to a lone surrogate
            raise Rejected(f"message {i} ({m['role']}) is not valid Unicode ({e})") from e
        token = SPECIAL_TOKEN.search(m["content"])
        if token:
            raise Rejected(f"message {i} ({m['role']}) holds the special token {token.group()!r}")
    if messages[-1]["role"] != "assistant":
        raise Rejected("conversation must end with an assistant turn")
    return messages


def parse_json(data: bytes) -> object:
    """The decoded ``json`` member of a sample (any JSON value: released formats use lists too)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(f"json is not UTF-8 ({e})") from e
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # also too deeply nested, or an integer past Python's digit limit
        raise Rejected(f"json does not parse ({type(e).__name__}: {str(e)[:200]})") from e


def validate(files: dict[str, bytes]) -> ValidSample:
    """Check one sample's members (``json`` and ``N.png``/``N.jpg``); raise :class:`Rejected` with a reason."""
    if "json" not in files:
        raise Rejected(f"no json member (members: {sorted(files)})")
    meta = parse_json(files["json"])
    if not isinstance(meta, dict):
        raise Rejected("json must be an object")
    return check_sample(meta, {name: data for name, data in files.items() if name != "json"})


def check_sample(meta: dict, members: dict[str, bytes]) -> ValidSample:
    """Check a parsed sample json and its image members (``N.png``, ``N.jpg``, ...: nothing else)."""
    messages = check_messages(meta.get("messages"))
    image_members = {}
    for name in members:
        match = IMAGE_MEMBER.match(name)
        if not match:
            raise Rejected(f"unexpected member {name!r}")
        index = int(match.group(1))
        if index in image_members:
            raise Rejected(f"two members for image {index}: {image_members[index]!r} and {name!r}")
        image_members[index] = name
    if sorted(image_members) != list(range(len(image_members))):
        raise Rejected(f"image members must be numbered 0..n-1, got {sorted(image_members)}")
    placeholders = sum(m["content"].count(PLACEHOLDER) for m in messages)
    if placeholders != len(image_members):
        raise Rejected(f"{placeholders} {PLACEHOLDER} placeholder(s) but {len(image_members)} image(s)")
    misplaced = next((m["role"] for m in messages if m["role"] != "user" and PLACEHOLDER in m["content"]), None)
    if misplaced:
        raise Rejected(f"{PLACEHOLDER} in {'an' if misplaced == 'assistant' else 'a'} {misplaced} turn")
    images = [members[image_members[i]] for i in range(len(image_members))]
    checked = [check_image(img, image_members[i]) for i, img in enumerate(images)]
    return ValidSample(sample_id(images, messages_text(messages)), meta, images, [(w, h) for w, h, _ in checked],
                       [black for *_, black in checked])
