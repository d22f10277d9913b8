"""Concept balancing: streaming top-k, the two selection rules, determinism and coverage."""

import numpy as np

from llava_ov.concepts.balance import coverage, inverse_frequency, metaclip_threshold, uniform
from llava_ov.concepts.index import streaming_topk
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
