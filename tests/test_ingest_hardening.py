"""ingest hardening: JSON that is not an object in released shards, and eval images reused from training."""

import io
import tarfile

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data import ingest
from llava_ov.data.sources import Candidate, one_turn
from tests.test_validate import _image


def test_eval_never_reuses_a_training_image_under_another_question(tmp_path, monkeypatch):
    image = _image(seed=7)

    def same_image(sizes, rng):
        yield Candidate("demo", "instruct", "general_vqa", one_turn("What is it?", "noise"), [image])
        yield Candidate("demo", "eval", "general_vqa", one_turn("Is it noise?", "yes"), [image],
                        {"task": "demo", "answer": "yes", "choices": ["no", "yes"]})

    monkeypatch.setitem(ingest.GENERATORS, "demo", same_image)
    with ArtifactWriter(tmp_path / "a", "ingest", 1) as w:
        metrics = ingest.build_embedded({"sources": {"demo": {"instruct": 1, "eval": 1}}}, 0, w.dir)
    assert metrics["pools"] == {"instruct": 1} and metrics["rejected"] == 1
    assert [r["reason"] for r in iter_jsonl(w.artifact.path / "rejects.jsonl")] == [
        "eval image also in a training pool"]


def test_released_json_that_is_not_an_object_is_a_rejection(tmp_path):
    folder = tmp_path / "data" / "align"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "part.tar", "w") as tar:
        info = tarfile.TarInfo("k.json")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"[1]"))
    with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = ingest.validate_released({"released": {"align": "data/align"}}, tmp_path, w.dir)
    assert metrics["rejected"] == metrics["total"] == 1
    assert metrics["reject_reasons"] == {"json must be an object": 1}
