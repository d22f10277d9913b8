"""Packing plan (exactly-once, both budgets, near the lower bound) and the packed loader."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from llava_ov.packing.build import plan_groups
from llava_ov.packing.lengths import encode_sample
from llava_ov.packing.loader import IGNORE, PackedLoader
from llava_ov.packing.plan import first_fit_decreasing, plan_packs
from llava_ov.text.template import ChatEncoder
from llava_ov.text import tokenizer as tokenizer_module
from llava_ov.text.tokenizer import train_bpe
from llava_ov.vision.image_processing import ImageProcessor
from tests.pack_fixtures import LOCAL, make_packs, measure, write_ingest, write_tokenizer


def naive_best_fit_decreasing(lengths, capacity):
    rooms = []
    for size in sorted(lengths, reverse=True):
        fits = [(r, i) for i, r in enumerate(rooms) if r >= size]
        if fits:
            r, i = min(fits)
            rooms[i] -= size
        else:
            rooms.append(capacity - size)
    return len(rooms)


@pytest.mark.parametrize("seed", range(5))
def test_plan_is_exactly_once_within_budgets_and_matches_reference_bfd(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, 400)
    lengths[:3] = [600, 513, 512]  # two too long for capacity 512
    patches = rng.integers(0, 200, 400)
    plan = plan_packs(lengths, 512, patches, 400)
    assert sorted(plan.rejected.tolist()) == [0, 1]
    members = plan.members.tolist()
    assert len(members) == len(set(members)) == 398 and not set(members) & {0, 1}
    assert plan.pack_sums(lengths).max() <= 512
    assert plan.pack_sums(patches).max() <= 400
    # without a binding patch budget the histogram algorithm is exactly best-fit decreasing
    plain = plan_packs(lengths[2:], 512)
    assert plain.n_packs == naive_best_fit_decreasing(lengths[2:].tolist(), 512)


def test_plan_is_near_the_lower_bound_and_not_worse_than_ffd():
    rng = np.random.default_rng(0)
    lengths = (rng.lognormal(5.5, 0.8, 20_000).astype(int) + 50).clip(1, 8192)
    plan = plan_packs(lengths, 8192)
    lower = -(-lengths.sum() // 8192)
    assert plan.n_packs <= lower * 1.005
    assert plan.n_packs <= first_fit_decreasing(lengths[:5000], 8192) + plan_packs(lengths[5000:], 8192).n_packs


def _png(side, colour):
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


CORPUS = ["what colour is it", "red", "blue", "a caption of a shape"] * 10


def _samples() -> list[tuple[str, dict, list[bytes]]]:
    """12 one-image samples (two image sizes)."""
    out = []
    for i in range(12):
        meta = {"messages": [{"role": "user", "content": "<image>\nwhat colour is it"},
                             {"role": "assistant", "content": "red" if i % 2 else "blue"}]}
        out.append((f"s{i:02d}", meta, [_png(56 + 28 * (i % 2), (i * 20, 0, 0))]))
    return out


IMAGE = dict(min_pixels=56 * 56, max_pixels=84 * 84)


def _built(root, tokenizer, per_shard=5, capacity=128, shard_bytes=1, cache=None, name="pack"):
    """ingest (12 samples over shards of ``per_shard``) -> lengths -> pack artifact, all by the pipeline's code."""
    ingest = write_ingest(root, _samples(), per_shard=per_shard)
    tok = write_tokenizer(root, tokenizer)
    lengths = measure(root, ingest, tok, IMAGE)
    art, summary = make_packs(root, ingest, tok, lengths, IMAGE, capacity, shard_bytes, name=name, cache=cache)
    return art, summary, ChatEncoder(tokenizer), ImageProcessor(**IMAGE)


@pytest.fixture(scope="module")
def pack_artifact(tmp_path_factory):
    art, summary, enc, proc = _built(tmp_path_factory.mktemp("pack"), train_bpe(CORPUS, 300))
    return art, enc, proc, summary


def test_plan_and_pack_index_agree_and_every_sample_is_packed_once(pack_artifact):
    art, enc, proc, summary = pack_artifact
    plan = pq.read_table(art / "plan.parquet")
    packs = pq.read_table(art / "packs.parquet")
    assert sorted(plan["sample_id"].to_pylist()) == [f"s{i:02d}" for i in range(12)]
    assert packs.num_rows == summary.packs == len(set(plan["pack"].to_pylist()))
    assert packs["samples"].to_pylist() == plan.group_by("pack").aggregate([("slot", "count")]).sort_by("pack")[
        "slot_count"].to_pylist()
    assert max(packs["tokens"].to_pylist()) <= 128
    assert summary.out_shards == len(set(packs["shard"].to_pylist())) == summary.packs  # shard_bytes 1: one each


def test_pack_bytes_predicts_a_packs_bytes_in_its_shard(pack_artifact):
    """``pack.<stage>.shard_bytes`` sets the file count through this estimate, made from the plan before encoding."""
    from llava_ov.packing.materialize import TAR_BLOCK, pack_bytes

    art = pack_artifact[0]
    packs = pq.read_table(art / "packs.parquet").sort_by("pack")
    plan = pq.read_table(art / "plan.parquet").group_by("pack").aggregate(
        [("total", "sum"), ("n_images", "sum"), ("image_bytes", "sum")]).sort_by("pack")
    estimate = pack_bytes(*(plan[c].to_numpy() for c in ("total_sum", "n_images_sum", "image_bytes_sum")))
    actual = packs["size"].to_numpy()
    images = plan["n_images_sum"].to_numpy()
    assert np.all(np.abs(estimate - actual) <= TAR_BLOCK // 2 * images + TAR_BLOCK), (estimate, actual)


def test_packs_per_shard_from_target_bytes():
    from llava_ov.packing.materialize import packs_per_shard

    assert packs_per_shard(np.array([1_000_000, 3_000_000]), 2_000_000_000) == 1000
    assert packs_per_shard(np.array([5_000]), 1_000) == 1  # a pack larger than the target is a shard of its own


def test_loader_batches_are_well_formed(pack_artifact):
    art, enc, proc, _ = pack_artifact
    batch = next(iter(PackedLoader(art, micro_batch=2, pad_id=enc.pad_id, processor=proc)))
    ids, labels, pos, cu = batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"]
    assert ids.shape == labels.shape == pos.shape == (2, 128)
    assert cu[0] == 0 and cu[-1] == 2 * 128 and torch.all(cu[1:] > cu[:-1])
    flat_pos = pos.flatten()
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert torch.equal(flat_pos[a:b], torch.arange(b - a))  # positions restart in every segment
    trained = labels != IGNORE
    assert torch.equal(labels[trained], ids[trained])
    decoded = enc.tokenizer.decode(ids[trained])
    assert set(decoded.replace("<|im_end|>", " ").split()) <= {"red", "blue"}
    n_images = sum(len(p) for p in batch["sample_ids"])
    assert batch["image_grid_thw"].shape == (n_images, 3)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert int((ids == enc.image_pad_id).sum()) == batch["pixel_values"].shape[0] // 4


def test_loader_resume_equals_uninterrupted(pack_artifact):
    art, enc, proc, _ = pack_artifact
    straight = PackedLoader(art, 1, enc.pad_id, proc, seed=3)
    it = iter(straight)
    n = len(straight.packs)
    reference = [next(it)["sample_ids"] for _ in range(n + 2)]  # crosses an epoch boundary
    first = PackedLoader(art, 1, enc.pad_id, proc, seed=3)
    it = iter(first)
    got = [next(it)["sample_ids"] for _ in range(n - 1)]
    state = first.state_dict()
    resumed = PackedLoader(art, 1, enc.pad_id, proc, seed=3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    got += [next(it)["sample_ids"] for _ in range(3)]
    assert got == reference


def test_data_parallel_ranks_collate_only_their_own_micro_batches(pack_artifact, monkeypatch):
    """take(n, rank, world): rank r gets micro-batches r, r+world, ... of the one global stream (across an epoch
    boundary), collates nothing else, and every rank ends at the same position (the checkpointed state)."""
    import llava_ov.packing.loader as loader_module

    art, enc, proc, _ = pack_artifact
    whole = PackedLoader(art, 2, enc.pad_id, proc, seed=3)
    reference = [b["sample_ids"] for b in whole.take(4) + whole.take(4)]  # 8 micro-batches: crosses an epoch
    collated = []
    real_collate = loader_module.collate
    monkeypatch.setattr(loader_module, "collate", lambda packs, *a: collated.append(packs) or real_collate(packs, *a))
    states, got = [], {}
    for rank in range(2):
        loader = PackedLoader(art, 2, enc.pad_id, proc, seed=3)
        got[rank] = [b["sample_ids"] for b in loader.take(4, rank, 2) + loader.take(4, rank, 2)]
        states.append(loader.state_dict())
    assert got[0] == reference[0::2] and got[1] == reference[1::2]
    assert len(collated) == 8  # 4 per rank, not 8 per rank
    assert states[0] == states[1] == whole.state_dict()


def test_resume_on_another_plan_fails(pack_artifact):
    art, enc, proc, _ = pack_artifact
    loader = PackedLoader(art, 2, enc.pad_id, proc)
    state = loader.state_dict() | {"plan_digest": "0" * 32}
    with pytest.raises(ValueError, match="the data changed since the checkpoint"):
        loader.load_state_dict(state)


def test_plan_groups_resynchronise_after_an_inserted_shard():
    names = [f"pool/part-{i:04d}.tar" for i in range(60)]
    groups = plan_groups(names, [40] * 60, 100)
    assert sorted(i for g in groups for i in g) == list(range(60)) and all(sum(40 for _ in g) >= 100
                                                                            for g in groups[:-1])
    inserted = names[:20] + ["pool/part-0019a.tar"] + names[20:]
    again = plan_groups(inserted, [40] * 61, 100)
    before = [[names[i] for i in g] for g in groups]
    after = [[inserted[i] for i in g] for g in again]
    changed = [g for g in after if g not in before]
    assert len(changed) <= 2 and any("pool/part-0019a.tar" in g for g in changed)


def test_adding_a_source_shard_rewrites_only_its_groups_packed_shards(tmp_path):
    """Five source shards planned in groups: a sixth shard leaves every other group's packed shards as they were."""
    from llava_ov.packing.build import build_packs

    tok = train_bpe(CORPUS, 300)
    art, _, _, _ = _built(tmp_path / "a", tok, per_shard=2, capacity=100)
    lengths = pq.read_table(tmp_path / "a" / "lengths.parquet")
    assert len(set(lengths["shard"].to_pylist())) == 6
    cfg = {"pools": ["align"], "capacity": 100, "patch_capacity": 1 << 20, "shard_bytes": 1,
           "plan_group_samples": 2}
    all_six = tmp_path / "six"
    all_six.mkdir()
    build_packs(all_six, tmp_path / "a" / "lengths.parquet", tmp_path / "a" / "ingest", tmp_path / "a" / "tokenizer",
                IMAGE, cfg, LOCAL, tmp_path / "cache")
    five_rows = lengths.filter(pc.not_equal(lengths["shard"], "align/align-000003.tar"))
    pq.write_table(five_rows, tmp_path / "five.parquet")
    five = tmp_path / "five"
    five.mkdir()
    build_packs(five, tmp_path / "five.parquet", tmp_path / "a" / "ingest", tmp_path / "a" / "tokenizer", IMAGE, cfg,
                LOCAL, tmp_path / "cache")
    names_six, names_five = (set(json.loads((d / "shards.json").read_text())) for d in (all_six, five))
    kept = names_six & names_five
    assert kept and len(names_six - kept) <= 2  # the group that gained a shard (and at most the next)


def _shard_input_ids(art) -> list[np.ndarray]:
    """``input_ids`` of every packed sample of a pack artifact, in pack order."""
    loader = PackedLoader(art, 1, 0, ImageProcessor(**IMAGE))
    return [np.load(io.BytesIO(loader.packs.read(i)["input_ids.npy"])) for i in range(len(loader.packs))]


def _expected_input_ids(art, enc) -> list[np.ndarray]:
    proc, by_id = ImageProcessor(**IMAGE), {sid: (meta, imgs) for sid, meta, imgs in _samples()}
    plan = pq.read_table(art / "plan.parquet").sort_by([("pack", "ascending"), ("slot", "ascending")])
    out: dict[int, list] = {}
    for pack, sid in zip(plan["pack"].to_pylist(), plan["sample_id"].to_pylist()):
        out.setdefault(pack, []).append(encode_sample(enc, proc, by_id[sid][0]["messages"], by_id[sid][1])[0])
    return [np.concatenate(out[p]) for p in sorted(out)]


def test_pack_cache_never_serves_shards_of_another_tokenizer(tmp_path, monkeypatch):
    """Reordered special tokens keep every length (the plan and the length check pass) but change the ids:
    a cache keyed by member ids alone would hand back shards with the old tokenizer's ids."""
    old_tok = train_bpe(CORPUS, 300)
    monkeypatch.setattr(tokenizer_module, "SPECIAL_TOKENS", tuple(reversed(tokenizer_module.SPECIAL_TOKENS)))
    new_tok = train_bpe(CORPUS, 300)
    cache = tmp_path / "shared-cache"
    old, _, old_enc, _ = _built(tmp_path / "old", old_tok, cache=cache)
    new, _, new_enc, _ = _built(tmp_path / "new", new_tok, cache=cache)
    assert old_enc.image_pad_id != new_enc.image_pad_id
    assert pq.read_table(old / "plan.parquet").equals(pq.read_table(new / "plan.parquet"))  # same lengths, same plan
    got, want = _shard_input_ids(new), _expected_input_ids(new, new_enc)
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_pack_cache_never_serves_a_damaged_entry(tmp_path):
    """A cache file cut short (a kill during the copy, a full disk) or edited is a miss, never an output."""
    tok, cache = train_bpe(CORPUS, 300), tmp_path / "shared-cache"
    first, _, _, _ = _built(tmp_path / "first", tok, cache=cache)
    fresh = {p.name: p.read_bytes() for p in (first / "shards").iterdir()}
    entries = sorted(cache.rglob("*.tar"))
    assert len(entries) == len(fresh)
    # the artifact's shards are hard links of the entries: break the links first, as a copying filesystem would
    for p in (first / "shards").iterdir():
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
    entries[0].write_bytes(entries[0].read_bytes()[:700])
    edited = bytearray(entries[-1].read_bytes())
    edited[520] ^= 0xFF  # a byte of the first member's data: same size, other content
    entries[-1].write_bytes(bytes(edited))
    again, _, _, _ = _built(tmp_path / "again", tok, cache=cache)
    assert {p.name: p.read_bytes() for p in (again / "shards").iterdir()} == fresh


def test_pack_cache_serves_unchanged_shards_across_runs(tmp_path, monkeypatch):
    """The same inputs in a later run (the tokenizer loaded again from its folder) hit: nothing is re-encoded."""
    from llava_ov.packing import materialize

    tok, cache = train_bpe(CORPUS, 300), tmp_path / "shared-cache"
    first, _, _, _ = _built(tmp_path / "first", tok, cache=cache)

    def no_encoding(*args, **kwargs):
        raise AssertionError("an unchanged shard was encoded again")

    monkeypatch.setattr(materialize, "encode_pack", no_encoding)
    again, _, _, _ = _built(tmp_path / "again", tok, cache=cache)
    assert sorted(p.name for p in (again / "shards").iterdir()) == sorted(p.name for p in (first / "shards").iterdir())
    assert all((again / "shards" / p.name).read_bytes() == p.read_bytes() for p in (first / "shards").iterdir())
