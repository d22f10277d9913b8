"""concept_index on the engine, on CPU: Ray workers give the local run's bytes, unchanged shards are cache hits,
unreadable images are counted rejections; and the stage scripts end to end on a small pool."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from PIL import Image

from llava_ov.artifacts import ArtifactWriter, digest_dir, open_artifact
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.actors import Slot, plan_slots
from llava_ov.concepts.shard_index import ShardIndexer, index_shards, make_spec, shard_jobs, write_index
from llava_ov.data.admission import INDEX_SCHEMA
from llava_ov.data.ingest import build_embedded
from llava_ov.data.reader import index_table
from llava_ov.data.shards import ShardWriter
from llava_ov.engine import Engine
from tests.clip_folders import tiny_clip_folder
from tests.project import copy_project, run
from tests.test_incremental import set_param

INDEX_CFG = {"dtype": "float32", "batch": 4, "embeddings": True}
BAD = {"notimage": b"this is not an image", "truncated": None}  # key -> image bytes (None: a cut-off PNG)


def _ingest(root: Path) -> Path:
    """An ingest artifact whose mid pool is 4 shards of emoji plus one hand-written shard holding two images the
    processor cannot read (ingest would have rejected them; a released shard validated by older rules might not)."""
    with ArtifactWriter(root / "artifacts/ingest", "ingest", 1) as w:
        build_embedded({"sources": {"emoji": {"mid": 16}}, "shard_max_bytes": 12_000}, 0, w.dir)
        rows = pq.read_table(w.dir / "index.parquet").to_pylist()
        good = next(r for r in rows if r["pool"] == "mid")
        with ShardWriter(w.dir / "mid", "mid-bad") as writer:
            for key, data in BAD.items():
                data = data if data is not None else _cut_png()
                meta = {"id": key, "source": "emoji", "messages": [{"role": "user", "content": "<image>"},
                                                                     {"role": "assistant", "content": "A thing."}]}
                writer.write(key, {"json": json.dumps(meta).encode(), "0.png": data})
                rows.append({**good, "sample_id": xxhash.xxh3_64_hexdigest(key.encode()), "key": key,
                             "shard": "mid/mid-bad-000000.tar"})
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), w.dir / "index.parquet", compression="zstd")
    return root / "artifacts/ingest"


def _cut_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()[:60]


def _encoder(root: Path) -> Path:
    """A random-weight tiny CLIP and 20 random unit concepts as a concept_encoder artifact."""
    x = np.random.default_rng(0).standard_normal((20, 32))
    with ArtifactWriter(root / "artifacts/concept_encoder", "concept_encoder", 1) as w:
        tiny_clip_folder(w.dir / "encoder", caption="a bar chart with bars")
        np.save(w.dir / "concept_embeddings.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
        w.stats["recall_at_5"] = 0.0
    return root / "artifacts/concept_encoder"


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("concepts")
    _ingest(root)
    _encoder(root)
    return root


def _run(root: Path, engine: Engine, cache: Path, out: Path, jobs=None) -> tuple[dict, list]:
    ingest = open_artifact(root / "artifacts/ingest", "ingest", 1)
    spec = make_spec(open_artifact(root / "artifacts/concept_encoder", "concept_encoder", 1), 3, INDEX_CFG, cache)
    jobs = jobs if jobs is not None else shard_jobs(ingest, ("mid",))
    results = index_shards(engine, spec, jobs)
    out.mkdir(parents=True)
    return write_index(jobs, results, out, spec.embeddings), results


def test_one_worker_per_gpu_else_per_cpu_never_more_than_items():
    assert plan_slots({"CPU": 16.0, "GPU": 8.0}, 1000) == (8, Slot(cpus=2, gpu=True))
    assert plan_slots({"CPU": 2.0}, 7) == (2, Slot(cpus=1, gpu=False))
    assert plan_slots({"CPU": 2.0}, 1) == (1, Slot(cpus=2, gpu=False))  # the default's one shard gets both cores
    assert plan_slots({"CPU": 16.0, "GPU": 8.0}, 3) == (3, Slot(cpus=5, gpu=True))


def test_two_ray_workers_give_the_local_bytes(pool, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local, _ = _run(pool, Engine(executor="local", cpus=1), tmp_path / "c1", tmp_path / "local")
    on_ray, results = _run(pool, Engine(executor="ray", cpus=2), tmp_path / "c2", tmp_path / "ray")
    assert local == on_ray and local["shards"] >= 4 and not any(r.reused for r in results)
    assert digest_dir(tmp_path / "local") == digest_dir(tmp_path / "ray")
    emb = np.load(tmp_path / "ray" / "image_embeddings.npy")
    table = pq.read_table(tmp_path / "ray" / "index.parquet")
    assert emb.shape == (local["images"], 32) and table.num_rows == local["images"]
    assert table["shard"].to_pylist() == sorted(table["shard"].to_pylist())  # merged in sorted shard order


def test_unchanged_shards_are_cache_hits_and_a_new_shard_computes_alone(pool, tmp_path):
    ingest = open_artifact(pool / "artifacts/ingest", "ingest", 1)
    jobs = shard_jobs(ingest, ("mid",))
    engine = Engine(executor="local", cpus=1)
    _, first = _run(pool, engine, tmp_path / "cache", tmp_path / "a", jobs[:-1])
    stats, again = _run(pool, engine, tmp_path / "cache", tmp_path / "b", jobs)
    assert [r.reused for r in first] == [False] * (len(jobs) - 1)
    assert [r.reused for r in again] == [True] * (len(jobs) - 1) + [False]
    full, _ = _run(pool, engine, tmp_path / "fresh", tmp_path / "c", jobs)
    assert digest_dir(tmp_path / "b") == digest_dir(tmp_path / "c")
    assert stats == {**full, "shards_reused": len(jobs) - 1}


def test_a_changed_key_is_a_miss(pool, tmp_path):
    """Anything in the spec's key (encoder, concepts, k, dtype, batch, the code digest) misses the old parts."""
    ingest = open_artifact(pool / "artifacts/ingest", "ingest", 1)
    enc = open_artifact(pool / "artifacts/concept_encoder", "concept_encoder", 1)
    jobs = shard_jobs(ingest, ("mid",))[:1]
    spec = make_spec(enc, 3, INDEX_CFG, tmp_path)
    engine = Engine(executor="local", cpus=1)
    assert not index_shards(engine, spec, jobs)[0].reused
    assert index_shards(engine, spec, jobs)[0].reused
    assert not index_shards(engine, replace(spec, cache=replace(spec.cache, code="edited code")), jobs)[0].reused
    assert make_spec(enc, 3, {**INDEX_CFG, "batch": 8}, tmp_path).cache.key("s") != spec.cache.key("s")
    assert make_spec(enc, 4, INDEX_CFG, tmp_path).cache.key("s") != spec.cache.key("s")


def test_preprocessing_threads_a_batch_ahead_give_the_same_part(pool, tmp_path):
    """The GPU worker's thread pool (preprocessing batch i+1 while the device runs batch i), exercised on CPU."""
    ingest = open_artifact(pool / "artifacts/ingest", "ingest", 1)
    spec = make_spec(open_artifact(pool / "artifacts/concept_encoder", "concept_encoder", 1), 3,
                     {**INDEX_CFG, "batch": 1}, tmp_path)
    jobs = shard_jobs(ingest, ("mid",))
    job = max(jobs, key=lambda j: (ingest.path / j.shard).stat().st_size)  # most samples: several batches
    worker = ShardIndexer(spec, Slot(cpus=1, gpu=False))
    rows = index_table(ingest, job.pools, ["sample_id", "key", "source"], shard=job.shard).to_pydict()
    inline = worker._index(ingest, job, rows)
    worker.pool = ThreadPoolExecutor(3)
    threaded = worker._index(ingest, job, rows)
    assert len(inline["sample_id"]) > spec.batch and inline.keys() == threaded.keys()
    assert all(np.array_equal(inline[name], threaded[name]) for name in inline)


@pytest.mark.parametrize("pillow_pads_truncated_files", [False, True])
def test_unreadable_images_are_counted_rejections(pool, tmp_path, monkeypatch, pillow_pads_truncated_files):
    """A truncated image is rejected even when another library (lmms-eval) has told Pillow to pad truncated files."""
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pillow_pads_truncated_files)
    stats, results = _run(pool, Engine(executor="local", cpus=1), tmp_path / "cache", tmp_path / "out")
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert stats["rejected"] == 2 and stats["reject_reasons"] == {"unreadable image": 2}
    assert all(r["source"] == "emoji" and r["reason"].startswith("unreadable image (") and " at 0x" not in r["reason"]
               for r in rejects)
    index = pq.read_table(pool / "artifacts/ingest/index.parquet").to_pylist()
    assert stats["images"] + stats["rejected"] == sum(r["pool"] == "mid" for r in index)  # in = kept + rejected
    assert sum(r.rejected for r in results) == 2


def test_stages_end_to_end(pool, tmp_path):
    """stages.concept_index then stages.balance in a project copy (local executor, as `engine` is no DVC param)."""
    root = copy_project(tmp_path / "project")
    for name in ("ingest", "concept_encoder"):
        art = pool / "artifacts" / name
        (root / "artifacts" / name).symlink_to(art, target_is_directory=True)
    set_param(root, "engine.executor", "local")
    set_param(root, "balance.target", 6)
    run(["python", "-m", "stages.concept_index"], root)
    run(["python", "-m", "stages.balance"], root)
    index = json.loads((root / "metrics/concept_index.json").read_text())
    balance = json.loads((root / "metrics/balance.json").read_text())
    assert index["images"] == 16 and index["rejected"] == 2 and index["topk"] == 5
    manifest = pq.read_table(root / "artifacts/balance/manifest.parquet")
    assert manifest.num_rows == balance["pool"] == 16 and manifest.column_names == [
        "sample_id", "source", "shard", "key", "concepts", "weight", "selected"]
    assert balance["selected"] == int(np.sum(manifest["selected"].to_numpy())) > 0


def test_encoder_corpus_streams_only_the_shards_it_needs(pool, monkeypatch):
    """Importing an encoder with a vocabulary file needs only the recall pairs: other shards are never opened."""
    from llava_ov.concepts import corpus as corpus_mod

    ingest = open_artifact(pool / "artifacts/ingest", "ingest", 1)
    rows = [r for r in pq.read_table(pool / "artifacts/ingest/index.parquet").to_pylist() if r["pool"] == "mid"]
    pick = rows[-3]
    opened: list[str] = []
    real = corpus_mod.iter_samples
    monkeypatch.setattr(corpus_mod, "iter_samples", lambda art, pools, shards: (opened.extend(
        Path(s).name for s in shards), real(art, pools, shards=shards))[1])
    got = corpus_mod.read_corpus(ingest, ("mid",), 1000, {pick["sample_id"]}, pixels=None, words=False)
    assert opened == [Path(pick["shard"]).name] and len(got.recall_pairs) == 1 and not got.pixels
    encoder = ImageTextEncoder.load(pool / "artifacts/concept_encoder/encoder")
    everything = corpus_mod.read_corpus(ingest, ("mid",), 0, set(), pixels=encoder.pixels, words=True)
    assert len(everything.pixels) == len(everything.captions) == len(rows) - 2 and everything.unreadable == 2
    assert "thing" in everything.words  # the unreadable samples' captions still count for the vocabulary


def test_the_concept_matrix_is_cached_by_content(pool, tmp_path):
    from llava_ov.concepts.concept_matrix import concept_matrix

    encoder = ImageTextEncoder.load(pool / "artifacts/concept_encoder/encoder")
    first, reused = concept_matrix(encoder, "digest-a", ["dog", "bar chart"], "A {}.", tmp_path)
    again, hit = concept_matrix(encoder, "digest-a", ["dog", "bar chart"], "A {}.", tmp_path)
    assert not reused and hit and np.array_equal(first, again) and first.dtype == np.float16
    assert not concept_matrix(encoder, "digest-a", ["dog", "bar chart"], "{}", tmp_path)[1]  # another prompt
    assert not concept_matrix(encoder, "digest-b", ["dog", "bar chart"], "A {}.", tmp_path)[1]  # another encoder
