"""ingest hardening: JSON that is not an object in released shards, eval images reused from training, and the
scratch folder of a failed or killed ingest."""

import io
import tarfile

import pytest

from llava_ov.artifacts import _HOST, ArtifactWriter, iter_jsonl
from llava_ov.data import ingest, released
from llava_ov.data.assemble import cache_or_scratch
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


def test_released_json_of_no_known_shape_is_a_rejection(tmp_path):
    """In a file of a known format (told from its other samples), a sample of no known shape is rejected."""
    import json

    folder = tmp_path / "data" / "align"
    folder.mkdir(parents=True)
    good = json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]})
    with tarfile.open(folder / "part.tar", "w") as tar:
        for name, data in (("a.json", good.encode()), ("k.json", b"[1]")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with ArtifactWriter(tmp_path / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = released.validate_released({"released": {"align": "data/align"}}, tmp_path, w.dir)
    assert metrics["kept"] == 1 and metrics["rejected"] == 1 and metrics["total"] == 2
    assert metrics["reject_reasons"] == {"json does not fit format 'internal'": 1}

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
        metrics = released.validate_released(cfg, tmp_path, w.dir)
    reasons = {r["where"]: r["reason"] for r in iter_jsonl(w.artifact.path / "rejects.jsonl")}
    assert reasons == {"part-000000.tar:e0": "eval image also in a training pool",
                       "part-000000.tar:e1": "eval image also in a training pool",
                       "part-000000.tar:e2": "eval sample also in a training pool"}
    assert metrics["pools"] == {"align": 3, "eval": 1}
    assert metrics["reject_reasons"] == {"eval image also in a training pool": 2,
                                         "eval sample also in a training pool": 1}


def test_ingest_scratch_lives_in_the_writers_folder_and_goes_with_it(tmp_path):
    """Without a cache, ingest's parts go to a scratch folder inside the artifact writer's temporary folder: gone
    before the digest on success, gone with the stage's own error on failure, and after a ``kill -9`` removed with
    the killed writer's folder by the next run (a scratch beside it stayed forever, the size of the whole pool)."""
    target = tmp_path / "artifacts" / "ingest"
    with ArtifactWriter(target, "ingest", 1) as w, cache_or_scratch(None, w.dir) as scratch:
        assert scratch.parent == w.dir.resolve()
        (scratch / "part-0.tar").write_bytes(b"x")
        (w.dir / "index.parquet").write_bytes(b"y")
    assert sorted(w.artifact.meta["files"]) == ["index.parquet"] and not scratch.exists()

    with pytest.raises(ValueError, match="shard 3 is truncated"):
        with cache_or_scratch(None, tmp_path / "out") as scratch:
            (scratch / "part-0.tar").write_bytes(b"x")
            raise ValueError("shard 3 is truncated")
    assert not scratch.exists()

    killed = target.parent / f".tmp-ingest-4194305-{_HOST}-abc123"  # no pid is that high: a dead writer's
    (killed / ".parts" / "align").mkdir(parents=True)
    (killed / ".parts" / "align" / "part-0.tar").write_bytes(b"x")
    with ArtifactWriter(target, "ingest", 1) as w:
        (w.dir / "index.parquet").write_bytes(b"y")
    assert not killed.exists()
