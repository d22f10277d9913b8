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



def _internal_shard(folder, samples: dict[str, tuple[str, bytes | None]]) -> None:
    """One released shard in the internal schema: key -> (answer, image bytes or None for a text-only sample)."""
    import json

    from llava_ov.data.shards import ShardWriter

    with ShardWriter(folder, "part") as w:
        for key, (answer, image) in samples.items():
            question = "What is it?" if image is None else "<image>\nWhat is it?"
            meta = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
            w.write(key, {"json": json.dumps(meta).encode(), **({"0.png": image} if image else {})})


def test_released_eval_is_checked_against_the_training_pools(tmp_path):
    """Issue 15 item 4: released mode keeps eval disjoint from training, as the embedded build does."""
    shared, other = _image(seed=7), _image(seed=8)
    _internal_shard(tmp_path / "data" / "align", {"a0": ("noise", shared), "a1": ("other", other),
                                                  "a2": ("text only", None)})
    _internal_shard(tmp_path / "data" / "eval", {"e0": ("a different answer", shared),  # same image
                                                 "e1": ("other", other),                 # same sample
                                                 "e2": ("text only", None),              # same text, no image
                                                 "e3": ("fresh", _image(seed=9))})
    cfg = {"released": {"align": "data/align", "eval": "data/eval"}}
    with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = ingest.validate_released(cfg, tmp_path, w.dir)
    reasons = {r["where"]: r["reason"] for r in iter_jsonl(w.artifact.path / "rejects.jsonl")}
    assert reasons == {"part-000000.tar:e0": "eval image also in a training pool",
                       "part-000000.tar:e1": "eval image also in a training pool",
                       "part-000000.tar:e2": "eval sample also in a training pool"}
    assert metrics["pools"] == {"align": 3, "eval": 1}
    assert metrics["reject_reasons"] == {"eval image also in a training pool": 2,
                                         "eval sample also in a training pool": 1}
