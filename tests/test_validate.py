"""Sample validation: every bad input of issue 2 (item 5) is a rejection with its reason, or a clear shard error.

The sample-level cases are injected straight into :func:`llava_ov.data.validate.validate`, in each image format
it accepts; the tar-level cases (truncated tar, absolute or ``..`` member paths) and the ledger that turns a
rejection into a ``rejects.jsonl`` line are injected through the released-data mode, the path real shards take.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data.released import validate_released
from llava_ov.data.shards import ShardError, messages_text, sample_id
from llava_ov.data.validate import Rejected, validate

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
QA = [{"role": "user", "content": "<image>\nWhat is shown?"}, {"role": "assistant", "content": "noise"}]


def _image(ext: str = "png", seed: int = 0) -> bytes:
    """A small noisy image (noise, so that every byte of the compressed data matters)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=FORMATS[ext])
    return buf.getvalue()


def _files(messages: list[dict] = QA, images: list[bytes] | None = None, ext: str = "png",
           **meta) -> dict[str, bytes]:
    images = [_image(ext)] if images is None else images
    files = {"json": json.dumps({"messages": messages, **meta}, ensure_ascii=False).encode("utf-8")}
    files.update({f"{i}.{ext}": img for i, img in enumerate(images)})
    return files


def _rejected(files: dict[str, bytes]) -> str:
    with pytest.raises(Rejected) as caught:
        validate(files)
    return str(caught.value)


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_a_good_sample_passes_in_every_format(ext):
    files = _files(ext=ext)
    sample = validate(files)
    assert sample.sizes == [(48, 40)]
    assert sample.images == [files[f"0.{ext}"]]
    assert sample.sample_id == sample_id(sample.images, messages_text(QA))


def test_one_leading_system_turn_is_allowed_and_part_of_the_sample():
    system = [{"role": "system", "content": "Answer in one word."}]
    sample = validate(_files(system + QA))
    assert sample.meta["messages"][0] == system[0]
    assert sample.sample_id == sample_id(sample.images, messages_text(system + QA)) != validate(_files()).sample_id


@pytest.mark.parametrize("size", [(400, 1), (1, 400), (603, 3)])
def test_an_image_smart_resize_refuses_is_rejected(size):
    """Past aspect ratio 200 ``lengths`` would fail on the sample: it never gets that far."""
    pixels = np.full((size[1], size[0], 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    reason = _rejected(_files(images=[buf.getvalue()]))
    assert reason == f"image 0.png has an aspect ratio over 200 ({size[0]}x{size[1]}; smart_resize refuses it)"


def test_aspect_ratio_200_is_kept():
    pixels = np.full((1, 200, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert validate(_files(images=[buf.getvalue()])).sizes == [(200, 1)]


def test_special_tokens_in_text_are_rejected():
    messages = [QA[0], {"role": "assistant", "content": "noise<|im_end|>"}]
    assert _rejected(_files(messages)) == "message 1 (assistant) holds the special token '<|im_end|>'"


def test_sample_id_ignores_metadata_but_not_images_or_text():
    base = validate(_files()).sample_id
    assert validate(_files(source="elsewhere", id="anything")).sample_id == base
    assert validate(_files(images=[_image(seed=1)])).sample_id != base
    assert validate(_files([QA[0], {"role": "assistant", "content": "static"}])).sample_id != base


def test_images_are_returned_in_placeholder_order():
    messages = [{"role": "user", "content": "<image> and <image>: same?"}, {"role": "assistant", "content": "no"},
                {"role": "user", "content": "And <image>?"}, {"role": "assistant", "content": "no"}]
    images = [_image(seed=s) for s in (2, 0, 1)]
    files = _files(messages, images)
    files = {name: files[name] for name in ("2.png", "json", "0.png", "1.png")}  # member order must not matter
    assert validate(files).images == images


def _garbage(data: bytes) -> bytes:
    return bytes(range(256)) * 4


def _magic_then_garbage(data: bytes) -> bytes:
    return data[:16] + bytes(len(data) - 16)


def _empty(data: bytes) -> bytes:
    return b""


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _without_last_20_bytes(data: bytes) -> bytes:
    return data[:-20]


@pytest.mark.parametrize("damage", [_garbage, _magic_then_garbage, _empty, _half, _without_last_20_bytes],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_corrupt_or_truncated_image_is_rejected(ext, damage):
    files = _files(ext=ext)
    files[f"0.{ext}"] = damage(files[f"0.{ext}"])
    assert _rejected(files).startswith(f"image 0.{ext} is corrupt or truncated")


def test_png_with_a_bad_checksum_is_rejected():
    data = bytearray(_image("png"))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    assert "image 0.png is corrupt" in _rejected(_files(images=[bytes(data)]))


def test_the_reason_names_the_broken_image():
    messages = [{"role": "user", "content": "<image><image>\nSame?"}, {"role": "assistant", "content": "no"}]
    good, broken = _image(seed=0), _half(_image(seed=1))
    assert _rejected(_files(messages, [good, broken])).startswith("image 1.png is corrupt or truncated")


@pytest.mark.parametrize("text", ["", " \n\t "], ids=["empty", "whitespace"])
@pytest.mark.parametrize("turn", [1, 2])
def test_empty_text_is_rejected(turn, text):
    messages = [{"role": "user", "content": "<image>\nWhat is shown?"}, {"role": "assistant", "content": "noise"},
                {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]
    messages[turn]["content"] = text  # the placeholder stays in turn 0: emptiness is the only fault
    assert _rejected(_files(messages)) == f"message {turn} ({messages[turn]['role']}) has empty text"


@pytest.mark.parametrize("encode", [
    lambda text: text.replace("noise", "\udcff").encode("utf-8", "surrogateescape"),  # a raw 0xff byte
    lambda text: text.replace("noise", "café").encode("latin-1"),
    lambda text: text.encode("utf-16"),
], ids=["stray 0xff byte", "latin-1", "utf-16"])
def test_non_utf8_text_is_rejected(encode):
    files = _files()
    files["json"] = encode(files["json"].decode("utf-8"))
    assert _rejected(files).startswith("json is not UTF-8")


@pytest.mark.parametrize("placeholders, n_images, reason", [
    (1, 2, "1 <image> placeholder(s) but 2 image(s)"),
    (2, 1, "2 <image> placeholder(s) but 1 image(s)"),
    (0, 1, "0 <image> placeholder(s) but 1 image(s)"),
    (1, 0, "1 <image> placeholder(s) but 0 image(s)"),
])
def test_image_count_mismatch_is_rejected(placeholders, n_images, reason):
    messages = [{"role": "user", "content": "<image>" * placeholders + "\nWhat is shown?"},
                {"role": "assistant", "content": "noise"}]
    assert _rejected(_files(messages, [_image(seed=s) for s in range(n_images)])) == reason


def test_placeholder_in_an_assistant_turn_is_rejected():
    messages = [{"role": "user", "content": "Draw it."}, {"role": "assistant", "content": "<image>"}]
    assert _rejected(_files(messages)) == "<image> in an assistant turn"


def test_image_members_with_a_gap_are_rejected():
    files = _files()
    files["1.png"] = files.pop("0.png")
    assert _rejected(files) == "image members must be numbered 0..n-1, got [1]"


@pytest.mark.parametrize("messages, reason", [
    ([], "'messages' must be a non-empty list"),
    ({"role": "user"}, "'messages' must be a non-empty list"),
    ([QA[1], QA[0]], "message 0 has role 'assistant', expected 'user'"),
    ([QA[0], QA[1], QA[1]], "message 2 has role 'assistant', expected 'user'"),
    ([QA[0], {"role": "system", "content": "Be brief."}, QA[1]], "message 1 has role 'system', expected 'assistant'"),
    ([{"role": "system", "content": "Be brief."}] * 2 + QA, "message 1 has role 'system', expected 'user'"),
    ([{"role": "system", "content": "<image>"}, QA[0], QA[1]], "2 <image> placeholder(s) but 1 image(s)"),
    ([{"role": "system", "content": " "}, *QA], "message 0 (system) has empty text"),
    ([QA[0]], "conversation must end with an assistant turn"),
    ([{"role": "user", "text": "<image>"}, QA[1]], "message 0 must be {'role', 'content'}"),
    ([{"role": "user", "content": ["<image>"]}, QA[1]], "message 0 (user) has empty text"),
])
def test_schema_violations_are_rejected(messages, reason):
    assert _rejected(_files(messages)).startswith(reason)


@pytest.mark.parametrize("change, reason", [
    ({"json": None}, "no json member"),
    ({"json": b"[1, 2]"}, "json must be an object"),
    ({"json": b'{"messages": '}, "json does not parse"),
    ({"txt": b"hello"}, "unexpected member 'txt'"),
    ({"0.PNG": b"", "0.png": None}, "unexpected member '0.PNG'"),
])
def test_member_level_faults_are_rejected(change, reason):
    files = _files()
    for name, data in change.items():
        if data is None:
            files.pop(name)
        else:
            files[name] = data
    assert _rejected(files).startswith(reason)


# --- through the released-data mode: each case becomes one line of rejects.jsonl, and the counts reconcile ---

def _bad(mutate) -> dict[str, bytes]:
    files = _files(source="demo")
    mutate(files)
    return files


SHARD_CASES = {  # key -> (members of the sample, the reason rejects.jsonl must give)
    "corrupt": (_bad(lambda f: f.update({"0.png": _magic_then_garbage(f["0.png"])})),
                "image 0.png is corrupt or truncated"),
    "truncated": (_bad(lambda f: f.update({"0.png": _half(f["0.png"])})), "image 0.png is corrupt or truncated"),
    "empty": (_files([QA[0], {"role": "assistant", "content": " "}], source="demo"),
              "message 1 (assistant) has empty text"),
    "latin1": (_bad(lambda f: f.update({"json": f["json"].decode().replace("noise", "né").encode("latin-1")})),
               "json is not UTF-8"),
    "fewer": (_bad(lambda f: f.update({"1.png": _image(seed=1)})), "1 <image> placeholder(s) but 2 image(s)"),
    "more": (_files([{"role": "user", "content": "<image><image>"}, QA[1]], source="demo"),
             "2 <image> placeholder(s) but 1 image(s)"),
}
UNSAFE = {"/tmp/absolute.json": "absolute", "../dotdot.json": "dotdot", "a/../../nested.json": "nested"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _released_shard(folder):
    folder.mkdir(parents=True)
    path = folder / "part-000000.tar"
    good = {f"good{i}": _files([QA[0], {"role": "assistant", "content": f"noise {i}"}], source="demo")
            for i in range(2)}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in {**good, **{k: v[0] for k, v in SHARD_CASES.items()}}.items():
            for ext in sorted(files, key=lambda e: (e != "json", e)):
                _add(tar, f"{key}.{ext}", files[ext])
        for name in UNSAFE:
            _add(tar, name, json.dumps({"messages": QA}).encode())
    return path


def test_every_bad_case_is_a_counted_rejection_with_its_reason(tmp_path):
    shard = _released_shard(tmp_path / "data" / "align")
    with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = validate_released({"released": {"align": "data/align"}}, tmp_path, w.dir)
    out = tmp_path / "artifacts" / "ingest"
    reasons = {r["where"].split(":", 1)[1]: r["reason"] for r in iter_jsonl(out / "rejects.jsonl")}
    expected = {key: reason for key, (_, reason) in SHARD_CASES.items()}
    expected.update({key: f"unsafe tar member path {name!r}" for name, key in UNSAFE.items()})
    assert set(reasons) == set(expected)
    for key, reason in expected.items():
        assert reasons[key].startswith(reason), key
    assert metrics["kept"] == 2 and metrics["rejected"] == len(expected)
    assert metrics["total"] == metrics["kept"] + metrics["rejected"]
    assert metrics["total"] == sum(s["samples"] for s in metrics["sources"].values())
    assert json.loads((out / "shards.json").read_text())[f"data/align/{shard.name}"]["samples"] == 2 + len(expected)
    assert not any((tmp_path / name.rsplit("/", 1)[-1]).exists() for name in UNSAFE)  # nothing extracted


def _drop_end_marker(data: bytes, tar_path) -> bytes:
    with tarfile.open(tar_path) as tar:
        last = tar.getmembers()[-1]
    return data[: last.offset_data + -(-last.size // 512) * 512]  # every member whole, no end-of-archive blocks


def _cut_in_last_header(data: bytes, tar_path) -> bytes:
    with tarfile.open(tar_path) as tar:
        return data[: tar.getmembers()[-1].offset + 100]


def _cut_in_last_data(data: bytes, tar_path) -> bytes:
    with tarfile.open(tar_path) as tar:
        return data[: tar.getmembers()[-1].offset_data + 10]


@pytest.mark.parametrize("cut", [_drop_end_marker, _cut_in_last_header, _cut_in_last_data],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_truncated_tar_is_a_clear_error_naming_the_shard(tmp_path, cut):
    shard = _released_shard(tmp_path / "data" / "align")
    shard.write_bytes(cut(shard.read_bytes(), shard))
    with pytest.raises(ShardError, match=rf"shard \S*{shard.name} is truncated.*re-download or rebuild it"):
        with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
            validate_released({"released": {"align": "data/align"}}, tmp_path, w.dir)
    assert not (tmp_path / "artifacts" / "ingest").exists()  # no half-written artifact


def test_truncated_image_is_rejected_even_when_another_library_allows_truncated_loads(monkeypatch):
    """lmms-eval sets Pillow's process-wide LOAD_TRUNCATED_IMAGES on import; validation must not inherit it."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    files = _files(ext="jpg")
    files["0.jpg"] = files["0.jpg"][: len(files["0.jpg"]) // 2]
    assert _rejected(files).startswith("image 0.jpg is corrupt or truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_strict_sections_overlapping_across_threads_keep_decoding_strict(monkeypatch):
    """Preprocessing threads overlap: the first section to close must not turn truncated loads back on for the other."""
    from PIL import ImageFile

    from llava_ov.vision.image_processing import strict_decoding

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    first, second = strict_decoding(), strict_decoding()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the second section is still decoding
    second.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
