"""Concept balancing: streaming top-k, the two selection rules, determinism and coverage."""

import numpy as np

from llava_ov.concepts.balance import coverage, inverse_frequency, metaclip_threshold, uniform
from llava_ov.artifacts import open_artifact
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.concepts.index import streaming_topk
from llava_ov.concepts.pool_index import index_pool
from llava_ov.data.reader import open_ingest
from llava_ov.file_cache import FileCache
from llava_ov.concepts.vocabulary import caption_concepts, wordnet_nouns


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_streaming_topk_equals_brute_force():
    rng = np.random.default_rng(0)
    images, concepts = _unit(rng, 300, 16), _unit(rng, 1000, 16)
    ids, sims = streaming_topk(images, concepts, 5, image_block=64, concept_block=97)
    full = images @ concepts.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref, 1), rtol=1e-5)


def _skewed_pool(rng, n=4000, n_concepts=500):
    """Zipf-like concept distribution: a few head concepts, a long tail."""
    p = 1.0 / np.arange(1, n_concepts + 1) ** 1.2
    return rng.choice(n_concepts, size=(n, 3), p=p / p.sum()), n_concepts


def test_balanced_covers_more_than_random_at_equal_size():
    rng = np.random.default_rng(1)
    topk, n_concepts = _skewed_pool(rng)
    ids = [f"{i:08x}" for i in range(len(topk))]
    u = uniform(ids, 0)
    _, prob = inverse_frequency(topk, np.ones(len(topk)), 800, n_concepts)
    balanced = u < prob
    random = u < balanced.mean()
    assert abs(balanced.sum() - 800) < 80 and abs(random.sum() - balanced.sum()) < 80
    assert coverage(topk, balanced, n_concepts) > coverage(topk, random, n_concepts)


def test_selection_is_stable_when_data_is_added():
    ids = [f"{i:08x}" for i in range(1000)]
    more = ids + [f"new{i}" for i in range(500)]
    assert np.array_equal(uniform(ids, 3), uniform(more, 3)[:1000])
    assert not np.array_equal(uniform(ids, 3), uniform(ids, 4))


def test_metaclip_threshold_rule():
    rng = np.random.default_rng(2)
    topk, n_concepts = _skewed_pool(rng, 3000, 300)
    ids = [f"{i:08x}" for i in range(len(topk))]
    keep, p = metaclip_threshold(topk, np.ones(len(topk)), 600, n_concepts, ids, 0)
    assert abs(int(keep.sum()) - 600) <= 15
    counts = np.bincount(topk.ravel(), minlength=n_concepts)
    rare = counts[topk].min(1) <= 2
    assert keep[rare].mean() > keep.mean()  # tail concepts are kept with p(c) = min(1, t / count) near 1
    again, _ = metaclip_threshold(topk, np.ones(len(topk)), 600, n_concepts, ids, 0)
    assert np.array_equal(keep, again)


def test_vocabulary_and_caption_concepts():
    nouns = wordnet_nouns(20000)
    assert len(nouns) == 20000 and "dog" in nouns and "circle" in nouns
    vocab = {w: i for i, w in enumerate(["circle", "yellow", "thumbs up", "up"])}
    assert caption_concepts("A yellow circle and a thumbs up.", vocab) == {0, 1, 2, 3}


def test_empty_selection_has_zero_coverage():
    topk = np.zeros((3, 2), dtype=np.int64)
    assert coverage(topk, np.zeros(3, bool), 10) == 0.0


def _concept_project(root):
    """A project copy holding a small ``ingest`` (rendered charts in ``mid``) and a random-weight concept encoder."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from llava_ov.artifacts import ArtifactWriter
    from llava_ov.data.ingest import build_embedded
    from llava_ov.text.tokenizer import train_bpe
    from tests.project import copy_project

    root = copy_project(root)
    with ArtifactWriter(root / "artifacts/ingest", "ingest", 1) as w:
        build_embedded({"sources": {"chart": {"mid": 6}}}, 0, w.dir)
    tok = train_bpe(["a bar chart with bars"] * 10, 300)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                         eos_token_id=eos, bos_token_id=eos, pad_token_id=tok.pad_token_id),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14), projection_dim=32)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    concepts = _unit(np.random.default_rng(0), 20, 32).astype(np.float16)
    with ArtifactWriter(root / "artifacts/concept_encoder", "concept_encoder", 1) as w:
        ImageTextEncoder(CLIPModel(config), tok, processor, 16).save(w.dir / "encoder")
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
    enc_art = open_artifact(root / "artifacts/concept_encoder", "concept_encoder", 1)
    again = index_pool(open_ingest(root / "artifacts/ingest"), "mid", ImageTextEncoder.load(enc_art / "encoder"),
                       enc_art.digest, np.load(enc_art / "concept_embeddings.npy"), 5,
                       FileCache(root / "cache/concept_index", ".npz"))
    assert again.reused == 1 and np.array_equal(again.embeddings, before)  # unchanged code: read back
    path = root / "llava_ov/vision/image_processing.py"
    old = '    return image.convert("RGB")\n'
    assert old in path.read_text(), "to_rgb changed: update the test"
    path.write_text(path.read_text().replace(old, '    return image.convert("L").convert("RGB")\n'))
    run(["python", "-m", "stages.concept_index"], root)
    after = np.load(root / "artifacts/concept_index/image_embeddings.npy")
    assert before.shape == after.shape == (6, 32)
    assert not np.array_equal(before, after), "the cache served embeddings of the old preprocessing"
