"""Concept balancing: device top-k, vectorised draws, the two selection rules, the recall sample, encoder-folder
checks, the manifest round trip, and the benchmark at a tiny shape."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from llava_ov.concepts import balance, folder
from llava_ov.concepts.balance import coverage, inverse_frequency, metaclip_threshold, select
from llava_ov.concepts.draws import id_hashes, uniform
from llava_ov.concepts.encoder import ImageTextEncoder, new_encoder
from llava_ov.concepts.folder import EncoderFolderError, check_encoder_folder
from llava_ov.concepts.index import topk_concepts
from llava_ov.concepts.manifest import SourceMix, read_pool, write_manifest
from llava_ov.concepts.recall import recall_sample
from llava_ov.concepts.vocabulary import caption_concepts, wordnet_nouns
from llava_ov.text.tokenizer import train_bpe
from tests.clip_folders import tiny_clip_folder

REPO = Path(__file__).resolve().parents[1]


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_topk_equals_brute_force_and_orders_ties_by_id():
    rng = np.random.default_rng(0)
    images, concepts = _unit(rng, 300, 16), _unit(rng, 1000, 16)
    ids, sims = topk_concepts(torch.from_numpy(images), torch.from_numpy(concepts), 5, image_block=64,
                              concept_block=97)
    full = images @ concepts.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref, 1), rtol=1e-5)
    concepts[[612, 7]] = images[0]  # two exact best matches, in different concept blocks
    ids, _ = topk_concepts(torch.from_numpy(images[:1]), torch.from_numpy(concepts), 3, concept_block=97)
    assert ids[0, :2].tolist() == [7, 612]
    concepts[[900, 40, 333, 41, 700]] = -images[1]  # five equal candidates for the last two places: the lowest ids
    concepts[[5, 6, 8]] = images[1]
    for block in (2, 97, 1000):
        ids, sims = topk_concepts(torch.from_numpy(-images[1:2]), torch.from_numpy(concepts), 5, concept_block=block)
        assert ids[0].tolist() == [40, 41, 333, 700, 900] and np.allclose(sims[0], 1.0)
        ids, sims = topk_concepts(torch.from_numpy(images[1:2]), torch.from_numpy(concepts), 5, concept_block=block)
        assert ids[0, :3].tolist() == [5, 6, 8] and sims[0, 2] > sims[0, 3]
    flipped = topk_concepts(torch.from_numpy(images[2:3]), torch.from_numpy(-concepts), 3)[0][0]
    assert np.array_equal(flipped, np.argsort(images[2] @ concepts.T, kind="stable")[:3])  # negative similarities
    with pytest.raises(ValueError, match="k must be in"):
        topk_concepts(torch.from_numpy(images), torch.from_numpy(concepts[:3]), 5)


def test_draws_are_stable_uniform_and_independent():
    ids = [f"{i:016x}" for i in range(100_000)]
    h = id_hashes(ids)
    assert h.dtype == np.uint64 and np.array_equal(h[:1000], id_hashes(ids[:1000]))
    u = uniform(h, 3)
    assert np.array_equal(u[:1000], uniform(h[:1000], 3))  # adding data never changes existing draws
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert np.all(np.abs(counts - 10_000) < 500)  # ~5 sigma
    for other in (uniform(h, 4), uniform(h, 3, 1), uniform(h, 3, np.arange(len(h), dtype=np.uint64))):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.02


def _skewed_pool(rng, n=4000, n_concepts=500):
    """Zipf-like concept distribution: a few head concepts, a long tail."""
    p = 1.0 / np.arange(1, n_concepts + 1) ** 1.2
    return rng.choice(n_concepts, size=(n, 3), p=p / p.sum()).astype(np.int32), n_concepts


def test_balanced_covers_more_than_random_at_equal_size():
    rng = np.random.default_rng(1)
    topk, n_concepts = _skewed_pool(rng)
    sel = select("inverse_frequency", topk, np.ones(len(topk)), 800, n_concepts,
                 id_hashes(f"{i:08x}" for i in range(len(topk))), 0)
    assert abs(sel.selected.sum() - 800) < 80 and abs(sel.random.sum() - sel.selected.sum()) < 80
    assert coverage(topk, sel.selected, n_concepts) > coverage(topk, sel.random, n_concepts)
    with pytest.raises(ValueError, match="balance.method must be one of"):
        select("uniform", topk, np.ones(len(topk)), 800, n_concepts, sel.weight.astype(np.uint64), 0)


def test_inverse_frequency_weights_do_not_depend_on_the_chunking(monkeypatch):
    rng = np.random.default_rng(3)
    topk, n_concepts = _skewed_pool(rng, 1000)
    mix = rng.uniform(0.5, 2.0, len(topk))
    whole, p_whole = inverse_frequency(topk, mix, 300, n_concepts)
    monkeypatch.setattr(balance, "_CHUNK", 7)
    chunked, p_chunked = inverse_frequency(topk, mix, 300, n_concepts)
    counts = np.bincount(topk.ravel(), minlength=n_concepts)
    assert np.array_equal(whole, chunked) and np.array_equal(p_whole, p_chunked)
    assert np.array_equal(whole, (1.0 / counts[topk]).mean(1) * mix)  # the report's rule, bit for bit


@pytest.mark.parametrize("method", balance.METHODS)
def test_selection_and_report_do_not_depend_on_the_chunking_or_the_mix_form(method, monkeypatch):
    """Every per-row temporary is made a chunk at a time (85M rows), and the mix is a source code per image."""
    rng = np.random.default_rng(4)
    topk, n_concepts = _skewed_pool(rng, 2000)
    source, weights = rng.integers(0, 3, len(topk)).astype(np.int32), np.array([1.0, 2.5, 0.0])
    h = id_hashes(f"{i:08x}" for i in range(len(topk)))
    whole = select(method, topk, weights[source], 1200, n_concepts, h, 0)  # clips at 1: re-spreads
    monkeypatch.setattr(balance, "_CHUNK", 7)
    chunked = select(method, topk, SourceMix(source, weights), 1200, n_concepts, h, 0)
    for field in ("weight", "selected", "random"):
        assert np.array_equal(getattr(whole, field), getattr(chunked, field)), field
    assert not chunked.selected[source == 2].any()  # a source of weight 0 is never kept
    report = balance.report(topk, chunked, n_concepts)
    assert report["tail_share_after"] == round(float(np.isin(topk[chunked.selected, 0], np.flatnonzero(
        balance.tail_concepts(np.bincount(topk.ravel(), minlength=n_concepts)))).mean()), 4)
    assert report["coverage_random"] == round(len(np.unique(topk[chunked.random])) / n_concepts, 5)


def test_metaclip_threshold_rule():
    rng = np.random.default_rng(2)
    topk, n_concepts = _skewed_pool(rng, 3000, 300)
    h = id_hashes(f"{i:08x}" for i in range(len(topk)))
    mix = np.ones(len(topk))
    keep, p = metaclip_threshold(topk, mix, 600, n_concepts, h, 0)
    assert int(keep.sum()) == 600  # t is the 600th smallest threshold: exactly the target
    counts = np.bincount(topk.ravel(), minlength=n_concepts)
    rare = counts[topk].min(1) <= 2
    assert keep[rare].mean() > keep.mean()  # tail concepts are kept with p(c) = min(1, t / count) near 1
    # the partition equals MetaCLIP's per-concept Bernoulli draws at the found t
    draws = np.stack([uniform(h, 0, topk[:, j].astype(np.uint64) + np.uint64(1)) for j in range(3)], 1)
    t_lo = max(np.min(draws[i] * counts[topk[i]]) for i in np.flatnonzero(keep))
    p_c = np.minimum(1.0, np.nextafter(t_lo, np.inf) / counts[topk])
    assert np.array_equal(keep, (draws < p_c).any(1))
    assert np.all((p >= 0) & (p <= 1)) and np.array_equal(keep, metaclip_threshold(topk, mix, 600, n_concepts, h, 0)[0])


def test_recall_sample_is_small_fixed_and_stable_under_added_data(tmp_path):
    rows = [{"sample_id": f"{i * 7919:016x}", "pool": "mid" if i % 2 else "align"} for i in range(20_000)]
    held = {r["sample_id"] for r in rows if int(r["sample_id"], 16) % 1000 < 50}
    full, half = tmp_path / "full.parquet", tmp_path / "half.parquet"
    pq.write_table(pa.Table.from_pylist(rows), full)
    pq.write_table(pa.Table.from_pylist(rows[:10_000]), half)
    sample = recall_sample(full, ("align", "mid"), 50, 300, 0)
    assert len(sample) == 300 and sample <= held
    assert sample == recall_sample(full, ("align", "mid"), 50, 300, 0) != recall_sample(full, ("align", "mid"), 50,
                                                                                          300, 1)
    # draws are per sample: what the bigger pool picks among the smaller pool's samples, the smaller one picks too
    assert sample & {r["sample_id"] for r in rows[:10_000]} <= recall_sample(half, ("align", "mid"), 50, 300, 0)
    assert len(recall_sample(full, ("mid",), 50, 10**6, 0)) == sum(int(r["sample_id"], 16) % 1000 < 50
                                                                   for r in rows if r["pool"] == "mid")


def test_manifest_round_trip_keeps_the_index_columns(tmp_path):
    index = tmp_path / "index.parquet"
    table = pa.table({"sample_id": ["a", "b", "c"], "source": ["emoji", "chart", "emoji"], "shard": ["s0", "s0", "s1"],
                      "key": ["ka", "kb", "kc"], "concepts": pa.array([[3, 1], [1, 2], [0, 3]], pa.list_(pa.int32())),
                      "similarities": pa.array([[0.5, 0.4]] * 3, pa.list_(pa.float32())),
                      "id_hash": pa.array(id_hashes(["a", "b", "c"]))})
    pq.write_table(table, index)
    pool = read_pool(index)
    assert pool.topk.tolist() == [[3, 1], [1, 2], [0, 3]] and pool.topk.dtype == np.int32
    assert pool.mix({"emoji": 2.0, "chart": 0.5})[0:3].tolist() == [2.0, 0.5, 2.0]
    with pytest.raises(ValueError, match=r"no weight for source\(s\) \['chart'\]"):
        pool.mix({"emoji": 1.0})
    write_manifest(index, tmp_path / "manifest.parquet", np.array([0.1, 0.2, 0.3]), np.array([True, False, True]))
    out = pq.read_table(tmp_path / "manifest.parquet")
    assert out.column_names == ["sample_id", "source", "shard", "key", "concepts", "weight", "selected"]
    assert out.select(["sample_id", "source", "shard", "key", "concepts"]).equals(
        table.select(["sample_id", "source", "shard", "key", "concepts"]))
    assert out["selected"].to_pylist() == [True, False, True]


def test_vocabulary_and_caption_concepts():
    nouns = wordnet_nouns(20000)
    assert len(nouns) == 20000 and "dog" in nouns and "circle" in nouns
    vocab = {w: i for i, w in enumerate(["circle", "yellow", "thumbs up", "up"])}
    assert caption_concepts("A yellow circle and a thumbs up.", vocab) == {0, 1, 2, 3}


def test_empty_selection_has_zero_coverage():
    topk = np.zeros((3, 2), dtype=np.int32)
    assert coverage(topk, np.zeros(3, bool), 10) == 0.0


def _clip_folder(path: Path, vocab_size: int | None = None, eos: int | None = None) -> Path:
    return tiny_clip_folder(path, vision_width=48, projection=24, vocab_size=vocab_size, eos=eos)


def test_encoder_folders_that_do_not_fit_are_refused(tmp_path):
    good = _clip_folder(tmp_path / "good")
    check_encoder_folder(good)
    assert ImageTextEncoder.load(good).model.config.projection_dim == 24
    projection = _clip_folder(tmp_path / "projection")
    config = json.loads((projection / "config.json").read_text())
    (projection / "config.json").write_text(json.dumps({**config, "projection_dim": 32}))
    with pytest.raises(EncoderFolderError, match=r"projection.*text_projection.weight has shape \[24, 32\]"):
        check_encoder_folder(projection)
    small_vocab = _clip_folder(tmp_path / "tokenizer", vocab_size=100)
    with pytest.raises(EncoderFolderError, match=r"tokenizer.*the tokenizer has \d+ tokens but the text tower embeds "
                                                 r"only 100"):
        ImageTextEncoder.load(small_vocab)
    legacy = _clip_folder(tmp_path / "legacy", eos=2)  # pools at the highest id, which is not this EOS (0)
    with pytest.raises(EncoderFolderError, match=r"legacy.*eos_token_id is 2.*the tokenizer's EOS 0 is not the "
                                                 r"highest id \(280\)"):
        ImageTextEncoder.load(legacy)
    openai = SimpleNamespace(eos_token_id=49407, get_vocab=lambda: {"a": 320, "<|endoftext|>": 49407})
    folder._check_pooling(tmp_path, openai, 2)  # OpenAI/MetaCLIP: the legacy 2, and EOS is the highest id
    folder._check_pooling(tmp_path, openai, 49407)
    elsewhere = _clip_folder(tmp_path / "elsewhere", eos=49407)  # CLIPTextConfig's default: found in no text
    with pytest.raises(EncoderFolderError, match=r"elsewhere: the text tower pools at token 49407 .* the tokenizer "
                                                 r"ends texts with 0"):
        ImageTextEncoder.load(elsewhere)
    pickled = _clip_folder(tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(EncoderFolderError, match=r"pickled: no model.safetensors \(found \['pytorch_model.bin'\]\)"):
        ImageTextEncoder.load(pickled)


def test_the_default_encoder_pools_each_text_at_its_eos():
    """The pipeline's EOS is id 2, for which transformers' CLIP pools at the highest token id of each text (here
    mid-sentence, so every text that shares its highest token up to there gets one vector)."""
    tok = train_bpe(["a photo of a dog", "a cat on a mat", "two dogs"] * 10, 300)
    cfg = dict(image_side=28, width=32, text_layers=1, vision_layers=1, max_text_len=16)
    encoder = new_encoder(tok, cfg, seed=0)
    texts = ["a photo of a dog", "a photo of a cat", "two dogs on a mat"]
    inputs = encoder.text_inputs(texts)
    ends = (inputs["attention_mask"].sum(1) - 1).tolist()
    assert [inputs["input_ids"][i, e].item() for i, e in enumerate(ends)] == [tok.convert_tokens_to_ids(
        "<|endoftext|>")] * 3
    with torch.no_grad():
        hidden = encoder.model.text_model(**inputs).last_hidden_state
        at_eos = encoder.model.text_projection(hidden[torch.arange(3), torch.tensor(ends)])
    np.testing.assert_allclose(encoder.embed_texts(texts), F.normalize(at_eos, dim=-1).numpy(), atol=1e-6)


def test_benchmark_runs_at_a_tiny_shape_on_cpu():
    """The --device cuda mode is the same code; here it must at least execute, with the table and the plan."""
    args = ["--shape", "tiny", "--images", "16", "--preprocess-images", "8", "--topk-images", "500", "--concepts",
            "3000", "--dim", "64", "--startup-concepts", "3000", "--balance-images", "20000"]
    out = subprocess.run([sys.executable, "benchmarks/bench_concepts.py", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for needle in ("images/s", "pairs/s", "s per worker", "B/image", "| 8 |", "| 64 |", "NOT measured"):
        assert needle in out.stdout, (needle, out.stdout)


def _concept_project(root):
    """A project copy holding a small ``ingest`` (rendered charts in ``mid``) and a random-weight concept encoder."""
    from llava_ov.artifacts import ArtifactWriter
    from llava_ov.data.ingest import build_embedded
    from tests.project import copy_project

    root = copy_project(root)
    with ArtifactWriter(root / "artifacts/ingest", "ingest", 1) as w:
        build_embedded({"sources": {"chart": {"mid": 6}}}, 0, w.dir)
    concepts = _unit(np.random.default_rng(0), 20, 32).astype(np.float16)
    with ArtifactWriter(root / "artifacts/concept_encoder", "concept_encoder", 1) as w:
        tiny_clip_folder(w.dir / "encoder", caption="a bar chart with bars")
        np.save(w.dir / "concept_embeddings.npy", concepts)
        w.stats["recall_at_5"] = 0.0
    return root


def test_concept_index_cache_misses_when_the_preprocessing_code_changes(tmp_path):
    """The per-shard cache is keyed by the encoder's weights *and* the code that turns an image into its
    embedding (here the image loading in llava_ov/vision): a changed preprocessing must re-embed the shard."""
    from tests.project import run

    root = _concept_project(tmp_path / "project")
    run(["python", "-m", "stages.concept_index"], root)
    before = np.load(root / "artifacts/concept_index/image_embeddings.npy")
    run(["python", "-m", "stages.concept_index"], root)
    again = json.loads((root / "metrics/concept_index.json").read_text())
    assert again["shards_reused"] == again["shards"] == 1  # unchanged code: read back
    assert np.array_equal(np.load(root / "artifacts/concept_index/image_embeddings.npy"), before)
    path = root / "llava_ov/vision/image_processing.py"
    old = '    return image.convert("RGB")\n'
    assert old in path.read_text(), "to_rgb changed: update the test"
    path.write_text(path.read_text().replace(old, '    return image.convert("L").convert("RGB")\n'))
    run(["python", "-m", "stages.concept_index"], root)
    after = np.load(root / "artifacts/concept_index/image_embeddings.npy")
    assert before.shape == after.shape == (6, 32)
    assert not np.array_equal(before, after), "the cache served embeddings of the old preprocessing"
