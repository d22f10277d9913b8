"""Webdataset tar shards: deterministic writing and safe reading.

Layout (webdataset convention): each sample is a group of tar members sharing a key, ``<key>.json`` plus its
images ``<key>.0.png``, ``<key>.1.jpg``, ... Any webdataset reader can consume these shards.

Writing is byte-deterministic (fixed mtime/owner/mode, members in a fixed order), so the same samples give the
same shard bytes and the same artifact digest on any machine. Reading rejects members with absolute or ``..``
paths and reports a truncated or corrupt tar as a :class:`ShardError` naming the file.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import xxhash

DEFAULT_MAX_SHARD_BYTES = 1 << 30


class ShardError(RuntimeError):
    """A shard cannot be read as a whole (truncated, not a tar): the error names the file and the fix."""


def sample_id(images: list[bytes], text: str) -> str:
    """Stable id of a sample: xxh3-64 (hex) of its image bytes and its text, in order."""
    h = xxhash.xxh3_64()
    for img in images:
        h.update(len(img).to_bytes(8, "little"))
        h.update(img)
    h.update(text.encode("utf-8"))
    return h.hexdigest()


def messages_text(messages: list[dict]) -> str:
    """Canonical text of a conversation, the text part of :func:`sample_id`."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))


def encode_meta(meta: dict) -> bytes:
    """The bytes of a sample's ``json`` member as ingest writes it (sorted keys: the same meta, the same bytes)."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _member_order(name: str) -> tuple:
    # json first, then images by index: readers see the metadata before the pixels.
    ext = name.split(".", 1)[1] if "." in name else name
    return (0, 0, ext) if ext == "json" else (1, int(ext.split(".")[0]) if ext[0].isdigit() else 1 << 30, ext)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Written:
    """Where :meth:`ShardWriter.write` put a sample: its shard's file name and its byte extent there (the
    :class:`RawSample` convention, so :func:`read_sample_at` reads it back)."""

    shard: str
    offset: int
    size: int


@dataclass
class ShardWriter:
    """Writes samples into ``<directory>/<prefix>-NNNNNN.tar`` shards, starting a new shard past ``max_bytes``.

    With ``numbered=False`` it writes exactly one shard, ``<directory>/<prefix>.tar``, whatever its size (ingest
    converts each released source file into one shard). ``shards`` lists the written shard paths; ``counts`` the
    number of samples in each.
    """

    directory: Path
    prefix: str
    max_bytes: int = DEFAULT_MAX_SHARD_BYTES
    numbered: bool = True
    shards: list[Path] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    _tar: tarfile.TarFile | None = None
    _bytes: int = 0

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / (f"{self.prefix}-{len(self.shards):06d}.tar" if self.numbered else f"{self.prefix}.tar")
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append(path)
        self.counts.append(0)
        self._bytes = 0

    def write(self, key: str, files: dict[str, bytes]) -> Written:
        """Write one sample; ``files`` maps extension (``json``, ``0.png``, ...) to bytes."""
        size = sum(len(v) + 1024 for v in files.values())
        if self._tar is None or (self.numbered and self._bytes and self._bytes + size > self.max_bytes):
            self.close()
            self._open()
        start = self._tar.offset
        for ext in sorted(files, key=lambda e: _member_order(f"k.{e}")):
            _add(self._tar, f"{key}.{ext}", files[ext])
        self._bytes += size
        self.counts[-1] += 1
        return Written(self.shards[-1].name, start, self._tar.offset - start)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RawSample:
    """The members of one sample as read from a shard; ``error`` is set when the sample must be rejected.

    ``offset`` is the byte offset of its first member's header in the shard and ``size`` the bytes up to the end
    of its last member's (padded) data: :func:`read_sample_at` reads it back alone with one seek.
    """

    key: str
    files: dict[str, bytes]
    error: str | None = None
    offset: int = 0
    size: int = 0


IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def sample_images(files: dict[str, bytes]) -> list[bytes]:
    """A sample's images in order: its members ``0.<ext>``, ``1.<ext>``, ... (the internal schema)."""
    found = {}
    for name, data in files.items():
        index, _, ext = name.partition(".")
        if index.isdigit() and ext in IMAGE_EXTS:
            found[int(index)] = data
    return [found[i] for i in sorted(found)]


def unsafe_member(name: str) -> bool:
    """True for tar member names that would escape the extraction folder (absolute, ``..``)."""
    return name.startswith("/") or name.startswith("\\") or ".." in Path(name).parts or ":" in name.split("/")[0]


def _check_end_marker(path: Path, offset: int) -> None:
    """A complete tar ends with two zero blocks after its last member; tarfile stops silently without them."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(1024)
    if size % 512 or len(tail) < 1024 or tail.strip(b"\0"):
        raise ShardError(f"shard {path} is truncated (no end-of-archive marker after byte {offset}); "
                         f"re-download or rebuild it")


def _samples(tar: tarfile.TarFile) -> Iterator[RawSample]:
    """The samples of an open tar, grouped by key, with their byte extents (see :class:`RawSample`)."""
    current: RawSample | None = None
    for member in tar:
        name = member.name
        end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if unsafe_member(name):
            key = Path(name).name.split(".", 1)[0] or name
            if current is not None:
                yield current
            current = RawSample(key=key, files={}, error=f"unsafe tar member path {name!r}", offset=member.offset,
                                size=end - member.offset)
            continue
        if not member.isfile():
            continue
        base = name.rsplit("/", 1)[-1]
        prefix = name[: len(name) - len(base)]
        if "." not in base:
            continue
        stem, ext = base.split(".", 1)
        key = prefix + stem
        if current is None or current.key != key:
            if current is not None:
                yield current
            current = RawSample(key=key, files={}, offset=member.offset)
        f = tar.extractfile(member)
        current.files[ext] = f.read() if f is not None else b""
        current.size = end - current.offset
    if current is not None:
        yield current


def read_shard(path: Path | str) -> Iterator[RawSample]:
    """Yield the samples of a webdataset shard in file order, grouped by key.

    Members with absolute or ``..`` paths turn their sample into a rejection (``error`` set) and are never
    written anywhere. A truncated or corrupt tar raises :class:`ShardError` naming the shard.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            yield from _samples(tar)
            end = tar.offset
        _check_end_marker(path, end)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"shard {path} is truncated or not a valid tar ({e}); re-download or rebuild it") from e


def read_sample_at(path: Path | str, offset: int, size: int, key: str | None = None) -> RawSample:
    """The one sample whose members span ``[offset, offset + size)`` of an uncompressed shard, read with one seek.

    ``key``, when given, must be the sample's key: a stale offset (the shard was rewritten) is an error, never
    another sample's data.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise EOFError(f"{size - len(data)} bytes short")
        with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 2 * tarfile.BLOCKSIZE), mode="r:") as tar:
            samples = list(_samples(tar))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"shard {path}: no sample at bytes {offset}..{offset + size} ({e}); rebuild the "
                         f"artifact that recorded these offsets") from e
    if len(samples) != 1 or (key is not None and samples[0].key != key):
        found = [s.key for s in samples]
        raise ShardError(f"shard {path}: bytes {offset}..{offset + size} hold {found}, not sample {key!r}; the "
                         f"shard changed after its offsets were recorded: rebuild the artifact that recorded them")
    return RawSample(samples[0].key, samples[0].files, samples[0].error, offset, size)
