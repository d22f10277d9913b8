"""ingest: every bad input is a counted rejection or a clear error; builds are deterministic; text is true."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data.ingest import build_embedded
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.data.released import validate_released
from llava_ov.data.shards import ShardError, ShardWriter
from llava_ov.data.sources import POOLS, rendered
from llava_ov.data.validate import Rejected, validate


def _png(side=32, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def _sample(content="<image>\nWhat colour?", answer="red", images=1, **extra) -> dict[str, bytes]:
    meta = {"id": "x", "messages": [{"role": "user", "content": content},
                                    {"role": "assistant", "content": answer}], **extra}
    files = {"json": json.dumps(meta).encode()}
    for i in range(images):
        files[f"{i}.png"] = _png(colour=(i * 40, 0, 0))
    return files


BAD_CASES = {
    "corrupt image": (lambda f: f.update({"0.png": b"\x89PNG\r\n\x1a\nnot really a png"}), "corrupt or truncated"),
    "truncated image": (lambda f: f.update({"0.png": f["0.png"][: len(f["0.png"]) // 2]}), "corrupt or truncated"),
    "empty text": (lambda f: f.update({"json": json.dumps({"messages": [
        {"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "  "}]}).encode()}),
        "empty text"),
    "non-UTF-8 text": (lambda f: f.update({"json": b'{"messages": "\xff\xfe"}'}), "not UTF-8"),
    "too few placeholders": (lambda f: f.update({"1.png": _png()}), "1 <image> placeholder(s) but 2 image(s)"),
    "too many placeholders": (lambda f: f.update({"json": json.dumps({"messages": [
        {"role": "user", "content": "<image><image>\nQ"}, {"role": "assistant", "content": "A"}]}).encode()}),
        "2 <image> placeholder(s) but 1 image(s)"),
    "roles do not alternate": (lambda f: f.update({"json": json.dumps({"messages": [
        {"role": "assistant", "content": "<image>"}, {"role": "user", "content": "A"}]}).encode()}),
        "expected 'user'"),
    "no json": (lambda f: f.pop("json"), "no json member"),
}


def test_a_good_sample_passes():
    s = validate(_sample())
    assert len(s.sample_id) == 16 and s.sizes == [(32, 32)]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_sample_is_rejected_with_its_reason(case):
    files = _sample()
    mutate, reason = BAD_CASES[case]
    mutate(files)
    with pytest.raises(Rejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        validate(files)


def _released_shard(folder, n_good=3):
    """A shard with good samples, every bad-sample case, and a member with an unsafe path."""
    folder.mkdir(parents=True)
    with ShardWriter(folder, "part") as w:
        for i in range(n_good):
            w.write(f"good{i}", _sample(answer=f"answer {i}", source="demo"))
        for i, case in enumerate(sorted(BAD_CASES)):
            files = _sample(answer=f"bad {i}", source="demo")
            BAD_CASES[case][0](files)
            w.write(f"bad{i:02d}", files)
    with tarfile.open(w.shards[0], "a") as tar:
        info = tarfile.TarInfo("../escape.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return w.shards[0]


def test_released_mode_counts_every_rejection(tmp_path):
    shard = _released_shard(tmp_path / "data" / "released" / "align")
    with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = validate_released({"released": {"align": "data/released/align"}}, tmp_path, w.dir)
    out = tmp_path / "artifacts" / "ingest"
    rejects = list(iter_jsonl(out / "rejects.jsonl"))
    assert metrics["kept"] == 3 and metrics["rejected"] == len(BAD_CASES) + 1 == len(rejects)
    assert metrics["total"] == metrics["kept"] + metrics["rejected"]
    assert any("unsafe tar member path '../escape.json'" in r["reason"] for r in rejects)
    assert all(r["reason"] and r["sample_id"] and r["where"].startswith(shard.name) for r in rejects)
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert all(r["key"] == r["sample_id"] and r["shard"] == "align/part-000000.tar" for r in index)
    kept = {row["key"]: meta for row, meta, _ in iter_samples(open_ingest(out), ("align",))}  # a copy, converted
    assert sorted(meta["origin"] for meta in kept.values()) == [f"{shard.name}:good{i}" for i in range(3)]
    shards = json.loads((out / "shards.json").read_text())
    assert shards[f"data/released/align/{shard.name}"]["samples"] == 3 + len(BAD_CASES) + 1
    assert not (tmp_path / "data" / "released" / "escape.json").exists()


def test_released_mode_truncated_tar_is_a_clear_error(tmp_path):
    shard = _released_shard(tmp_path / "data" / "align")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ShardError, match=f"{shard.name}.*truncated"):
        with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
            validate_released({"released": {"align": "data/align"}}, tmp_path, w.dir)
    assert not (tmp_path / "artifacts" / "ingest").exists()  # no half artifact


SMALL = {"sources": {name: {"align": 6, "mid": 6, "instruct": 6, "eval": 4}
                     for name in ["emoji", "easyvqa", "digits", "chart", "table", "ocr", "counting", "grounding"]}}


def _build(path):
    with ArtifactWriter(path, "ingest", 1) as w:
        metrics = build_embedded(SMALL, 0, w.dir)
    return w.artifact, metrics


def test_embedded_build_is_deterministic_and_reconciles(tmp_path):
    a, metrics = _build(tmp_path / "a")
    b, _ = _build(tmp_path / "b")
    assert a.digest == b.digest
    assert metrics["total"] == 8 * 22 == metrics["kept"] + metrics["rejected"]
    index = pq.read_table(a.path / "index.parquet").to_pylist()
    assert {r["pool"] for r in index} == set(POOLS)
    train = {r["sample_id"] for r in index if r["pool"] != "eval"}
    evals = [r for r in index if r["pool"] == "eval"]
    assert evals and not train & {r["sample_id"] for r in evals}
    assert all(r["task"] for r in evals)


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown source.*'pictures'"):
        with ArtifactWriter(tmp_path / "a", "ingest", 1) as w:
            build_embedded({"sources": {"pictures": {"align": 1}}}, 0, w.dir)


def test_counting_answers_match_the_drawn_shapes():
    rng = np.random.default_rng(3)
    for _ in range(30):
        cand = rendered.counting(rng, "eval")
        img = np.asarray(Image.open(io.BytesIO(cand.images[0])).convert("L"))
        _, n_blobs = ndimage.label(img < 250)
        assert str(n_blobs) == cand.extra["answer"]


def test_chart_tallest_bar_is_the_answer():
    rng = np.random.default_rng(4)
    for _ in range(20):
        cand = rendered.chart(rng, "eval")
        img = np.asarray(Image.open(io.BytesIO(cand.images[0])).convert("RGB")).astype(int)
        coloured = (np.abs(img - img.mean(-1, keepdims=True)).sum(-1) > 60)  # bar pixels, not black text/axis
        cols = coloured.any(0).nonzero()[0]
        tops = {c: coloured[:, c].nonzero()[0].min() for c in cols}
        tallest_x = min(tops, key=tops.get)
        labels = cand.extra["choices"]
        width = (112 - 16) // len(labels)
        assert labels[(tallest_x - 8) // width] == cand.extra["answer"]
