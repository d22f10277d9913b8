"""Inputs that would otherwise escape validate() as exceptions or drop an image silently: each is a rejection."""

import struct
import zlib

import pytest

from tests.test_validate import _files, _image, _rejected


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def test_lone_surrogate_escape_is_rejected_not_a_crash():
    files = _files()
    files["json"] = files["json"].replace(b"noise", b"\\ud800")  # valid UTF-8 and valid JSON, not valid Unicode
    assert "is not valid Unicode" in _rejected(files)


def test_decompression_bomb_is_rejected_not_a_crash():
    assert "too large to decode safely" in _rejected(_files(images=[_png_header_only(20000, 20000)]))


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b'{"messages": 1' + b"0" * 5000 + b"}"],
                         ids=["nested too deep", "integer too long"])
def test_pathological_json_is_rejected_not_a_crash(text):
    files = _files()
    files["json"] = text
    assert _rejected(files).startswith("json does not parse")


@pytest.mark.parametrize("second", ["0.jpg", "00.png"])
def test_two_members_for_one_image_are_rejected_not_one_dropped(second):
    files = _files()
    files[second] = _image("jpg" if second.endswith("jpg") else "png", seed=1)
    assert _rejected(files).startswith("two members for image 0")


def test_only_png_jpeg_webp_decoders_run():
    from io import BytesIO
    from PIL import Image
    buf = BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    assert "corrupt" in _rejected(_files(images=[buf.getvalue()]))
