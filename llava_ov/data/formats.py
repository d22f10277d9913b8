"""Readers of the published data formats: each turns one source file's samples into internal-schema samples.

The released datasets come as the published conversion scripts wrote them (``reference/recipe.md``, "Released
data formats"). A source file holds one format; ``ingest`` reads it here and validates and writes what comes out,
so every stage after ``ingest`` sees one schema. Formats, by the name ``ingest.formats.<pool>`` may give:

- ``internal``: this project's schema, ``{"messages": [{"role", "content"}], ...}`` + ``0.png``/``0.jpg``, ...
- ``llava_conversations`` (LLaVA-558K): ``<key>.jpg`` + ``<key>.json`` = ``[{"from": "human"|"gpt", "value"}]``.
- ``messages`` (instruct, ``convert_to_webdataset.py --media image``): ``<key>.jpg`` + a bare messages list.
- ``mix`` (its default ``--media mix``): ``{"texts": messages, "media": "image"|"text"|"video", "name": [...]}``,
  images in members ``<key>.<i>_<basename>`` listed by ``name``; video samples are rejected (not supported).
- ``packed_captions`` (Mid-Training quick start): key ``ps_XXXXXXXX``, ``img0.jpg``, ``img1.jpg``, ... and
  ``{"prompts", "captions", "images"}``: one pre-packed group, read as its member samples (``<key>#<i>``).
- ``parquet_captions`` (Mid-Training-85M): parquet with ``id``, ``image`` (HF Image: ``bytes``, ``path``) and
  ``caption``, read one row group at a time; a row's key is its row number in the file.

Nothing from the data is executed, and a tar is read through :func:`llava_ov.data.shards.read_shard`, which
refuses absolute and ``..`` member paths. A sample that cannot be converted is a :class:`Member` with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from llava_ov.data.shards import ShardError, read_shard
from llava_ov.data.validate import PLACEHOLDER, Rejected, parse_json

TAR_FORMATS = ("internal", "llava_conversations", "messages", "mix", "packed_captions")
PARQUET_FORMAT = "parquet_captions"
FORMATS = (*TAR_FORMATS, PARQUET_FORMAT)
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
CHAT_ROLES = {r: r for r in ("system", "user", "assistant")}
PACKED_IMAGE = re.compile(r"^img(\d+)\.[^.]+$")
PARQUET_COLUMNS = ("id", "image", "caption")


class FormatError(ValueError):
    """A source file whose format cannot be told, or that mixes formats: the message names the file."""


@dataclass
class Member:
    """One sample read from a source file: converted (``meta`` + image members ``0.jpg``, ...) or rejected."""

    key: str                      # unique within the source file
    meta: dict | None = None      # internal-schema json (without id/source/origin, which ingest adds)
    images: dict[str, bytes] = field(default_factory=dict)
    reason: str = ""              # why it was rejected, when it was
    claimed_id: str = ""          # the id the data gives it (json id, parquet id, tar key), for rejects.jsonl


def detect(obj: object) -> str | None:
    """The webdataset format a parsed sample json belongs to, or None."""
    if isinstance(obj, dict):
        return next((fmt for key, fmt in (("messages", "internal"), ("texts", "mix"),
                                          ("captions", "packed_captions")) if key in obj), None)
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return "llava_conversations" if "from" in obj[0] else "messages" if "role" in obj[0] else None
    return None


def image_ext(data: bytes, name: str) -> str:
    """The extension the internal schema names an image by, from its magic bytes (not the source's name)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise Rejected(f"image {name!r} is not PNG, JPEG or WebP")


def _turns(turns: object, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise Rejected("the conversation must be a non-empty list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise Rejected(f"turn {i} must be {{{role_key!r}, {text_key!r}}}")
        if turn[role_key] not in roles:
            raise Rejected(f"turn {i} has {role_key} {turn[role_key]!r}, not one of {sorted(roles)}")
        out.append({"role": roles[turn[role_key]], "content": turn[text_key]})
    return out


def _numbered(images: list[tuple[str, bytes]]) -> dict[str, bytes]:
    return {f"{i}.{image_ext(data, name)}": data for i, (name, data) in enumerate(images)}


def _one_image(files: dict[str, bytes]) -> dict[str, bytes]:
    """The single image member of a LLaVA / messages sample (``jpg``; none for a text-only sample)."""
    unexpected = sorted(ext for ext in files if ext.lower() not in ("jpg", "jpeg", "png", "webp"))
    if unexpected:
        raise Rejected(f"unexpected member {unexpected[0]!r}")
    if len(files) > 1:
        raise Rejected(f"more than one image member ({sorted(files)})")
    return _numbered(sorted(files.items()))


def _internal(key: str, obj: dict, files: dict[str, bytes]) -> Iterator[Member]:
    yield Member(key, obj, files, claimed_id=str(obj.get("id") or key))


def _llava(key: str, obj: list, files: dict[str, bytes]) -> Iterator[Member]:
    yield Member(key, {"messages": _turns(obj, "from", "value", LLAVA_ROLES)}, _one_image(files), claimed_id=key)


def _messages(key: str, obj: list, files: dict[str, bytes]) -> Iterator[Member]:
    yield Member(key, {"messages": _turns(obj, "role", "content", CHAT_ROLES)}, _one_image(files), claimed_id=key)


def _mix(key: str, obj: dict, files: dict[str, bytes]) -> Iterator[Member]:
    media = obj.get("media")
    if media == "video":
        raise Rejected("video samples are not supported")
    if media not in ("image", "text"):
        raise Rejected(f"media {media!r} is not 'image', 'text' or 'video'")
    names = (obj.get("name") or []) if media == "image" else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Rejected("'name' must be a list of member names")
    messages = _turns(obj.get("texts"), "role", "content", CHAT_ROLES)
    missing = [n for n in names if n not in files]
    if missing:
        raise Rejected(f"image member {missing[0]!r} named in the json is missing")
    unexpected = sorted(set(files) - set(names))
    if unexpected:
        raise Rejected(f"unexpected member {unexpected[0]!r}")
    yield Member(key, {"messages": messages}, _numbered([(n, files[n]) for n in names]), claimed_id=key)


def _group_size(files: dict[str, bytes]) -> int:
    """Member samples of a packed group whose json cannot be read: its ``imgN`` members (at least 1)."""
    return max(1, sum(bool(PACKED_IMAGE.match(n)) for n in files))


def _packed(key: str, obj: dict, files: dict[str, bytes]) -> Iterator[Member]:
    """A pre-packed caption group as its member samples; a fault of the whole group rejects every member."""
    images, captions, prompts = obj.get("images"), obj.get("captions"), obj.get("prompts") or []
    n = len(images) if isinstance(images, list) else 0
    members = {int(m.group(1)): name for name in files if (m := PACKED_IMAGE.match(name))}
    unexpected = sorted(set(files) - {name for i, name in members.items() if i < n})
    fault = ""
    if not isinstance(images, list) or not isinstance(captions, list) or not isinstance(prompts, list):
        fault = "'images', 'captions' and 'prompts' must be lists"
    elif n == 0:
        fault = "no images"
    elif len(captions) != n or (prompts and len(prompts) != n):
        fault = f"image, caption and prompt counts differ ({n}, {len(captions)}, {len(prompts)})"
    elif unexpected:
        fault = f"unexpected member {unexpected[0]!r}"
    if fault:
        for i in range(max(1, n, len(members))):
            yield Member(f"{key}#{i}", reason=f"packed group: {fault}", claimed_id=f"{key}#{i}")
        return
    for i in range(n):
        member = f"{key}#{i}"
        try:
            if i not in members:
                raise Rejected(f"image member img{i} is missing")
            prompt = prompts[i] if prompts else PLACEHOLDER
            if not isinstance(prompt, str):
                raise Rejected(f"prompt {i} is not a string")
            caption = captions[i].get("content") if isinstance(captions[i], dict) else captions[i]
            user = prompt if PLACEHOLDER in prompt else f"{PLACEHOLDER}\n{prompt}"
            yield Member(member, {"messages": [{"role": "user", "content": user},
                                               {"role": "assistant", "content": caption}]},
                         _numbered([(members[i], files[members[i]])]), claimed_id=member)
        except Rejected as e:
            yield Member(member, reason=str(e), claimed_id=member)


CONVERTERS: dict[str, Callable[[str, object, dict[str, bytes]], Iterator[Member]]] = {
    "internal": _internal, "llava_conversations": _llava, "messages": _messages, "mix": _mix,
    "packed_captions": _packed,
}


def _parsed(files: dict[str, bytes]) -> object:
    if "json" not in files:
        raise Rejected(f"no json member (members: {sorted(files)})")
    return parse_json(files["json"])


def source_format(path: Path, named: str) -> str | None:
    """The format of one source file: ``named`` if not ``auto``, else told from its samples (None if empty).

    A tar's format is that of its first sample whose json parses into a known shape; a tar with samples but none
    of a known shape is a :class:`FormatError` naming the file.
    """
    if path.suffix == ".parquet":
        if named not in ("auto", PARQUET_FORMAT):
            raise FormatError(f"{path}: ingest.formats names {named!r} but a .parquet file is {PARQUET_FORMAT!r}")
        return PARQUET_FORMAT
    if named != "auto":
        if named not in TAR_FORMATS:
            raise FormatError(f"{path}: ingest.formats names {named!r}; webdataset formats: {list(TAR_FORMATS)}")
        return named
    first = None
    for raw in read_shard(path):
        first = first or raw
        try:
            fmt = None if raw.error else detect(_parsed(raw.files))
        except Rejected:
            continue
        if fmt:
            return fmt
    if first is None:
        return None
    raise FormatError(f"{path}: unknown format: no sample is in a known format (first sample {first.key!r} has "
                      f"members {sorted(first.files)}); known: {list(TAR_FORMATS)}, or name one in "
                      f"ingest.formats.<pool>")


def read_members(path: Path, fmt: str, auto: bool) -> Iterator[Member]:
    """The samples of one source file in ``fmt``, in file order.

    With ``auto`` (the format was detected) a sample of another known format is a :class:`FormatError` (the
    file mixes formats); with a named format it is a rejection, like any sample that does not fit.
    """
    if fmt == PARQUET_FORMAT:
        yield from _parquet_members(path)
        return
    for raw in read_shard(path):
        if raw.error:
            yield Member(raw.key, reason=raw.error, claimed_id=raw.key)
            continue
        files = {name: data for name, data in raw.files.items() if name != "json"}
        try:
            obj = _parsed(raw.files)
            found = detect(obj)
            if auto and found and found != fmt:
                raise FormatError(f"{path}: mixes formats: {fmt!r} (its first samples) and {found!r} (sample "
                                  f"{raw.key!r}); one file must hold one format")
            if found != fmt:
                raise Rejected(f"json does not fit format {fmt!r} ({f'it is {found}' if found else 'no known shape'})")
            yield from CONVERTERS[fmt](raw.key, obj, files)
        except Rejected as e:
            keys = [f"{raw.key}#{i}" for i in range(_group_size(files))] if fmt == "packed_captions" else [raw.key]
            for key in keys:
                yield Member(key, reason=str(e), claimed_id=key)


def _parquet_members(path: Path) -> Iterator[Member]:
    """Rows of a Mid-Training-85M parquet file, one row group in memory at a time."""
    try:
        parquet = pq.ParquetFile(path)
        missing = [c for c in PARQUET_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise FormatError(f"{path}: parquet without column(s) {missing}; {PARQUET_FORMAT} needs "
                              f"{list(PARQUET_COLUMNS)}")
        image_type = parquet.schema_arrow.field("image").type
        if not pa.types.is_struct(image_type) or image_type.get_field_index("bytes") < 0:
            raise FormatError(f"{path}: column 'image' is {image_type}, not an HF Image struct (bytes, path)")
        row = 0
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=list(PARQUET_COLUMNS))
            ids, captions = table.column("id").to_pylist(), table.column("caption").to_pylist()
            images = table.column("image").combine_chunks()
            data = images.field("bytes")
            names = images.field("path") if image_type.get_field_index("path") >= 0 else None
            for i in range(table.num_rows):
                key, claimed = str(row), str(ids[i]) if ids[i] is not None else str(row)
                row += 1
                try:
                    image = data[i].as_py() if images[i].is_valid else None
                    if not image:
                        raise Rejected("row has no image bytes")
                    name = (names[i].as_py() if names is not None else None) or f"row {key}"
                    yield Member(key, {"messages": [{"role": "user", "content": PLACEHOLDER},
                                                    {"role": "assistant", "content": captions[i]}]},
                                 _numbered([(name, image)]), claimed_id=claimed)
                except Rejected as e:
                    yield Member(key, reason=str(e), claimed_id=claimed)
            del table, images, data, names  # free this row group before reading the next
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"parquet file {path} is truncated or unreadable ({type(e).__name__}: {e}); "
                         f"re-download it") from e
