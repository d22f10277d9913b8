"""Packing plan (exactly-once, both budgets, near the lower bound) and the packed loader."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from llava_ov.artifacts import ArtifactWriter, digest_file
from llava_ov.data.shards import read_shard
from llava_ov.packing.lengths import encode_sample, pool_rows
from llava_ov.packing.loader import IGNORE, PackedLoader
from llava_ov.packing.materialize import write_packed_shards
from llava_ov.packing.plan import first_fit_decreasing, plan_packs
from llava_ov.text.template import ChatEncoder
from llava_ov.text import tokenizer as tokenizer_module
from llava_ov.text.tokenizer import train_bpe
from llava_ov.vision.image_processing import ImageProcessor


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


def _samples(enc: ChatEncoder, proc: ImageProcessor) -> tuple[dict, dict]:
    """12 one-image samples (two image sizes) and their exact lengths under ``enc``/``proc``."""
    samples, lengths = {}, {}
    for i in range(12):
        meta = {"messages": [{"role": "user", "content": "<image>\nwhat colour is it"},
                             {"role": "assistant", "content": "red" if i % 2 else "blue"}]}
        images = [_png(56 + 28 * (i % 2), (i * 20, 0, 0))]
        sid = f"s{i:02d}"
        samples[sid] = (meta, images)
        grid = proc.grid(56 + 28 * (i % 2), 56 + 28 * (i % 2))
        lengths[sid] = len(enc.encode(meta["messages"], [proc.num_image_tokens(grid)])[0])
    return samples, lengths


def _packs(lengths: dict[str, int], capacity: int) -> list[list[str]]:
    ids = sorted(lengths)
    plan = plan_packs(np.array([lengths[s] for s in ids]), capacity)
    return [[ids[j] for j in plan.members[a:b]] for a, b in zip(plan.offsets[:-1], plan.offsets[1:])]


@pytest.fixture(scope="module")
def pack_artifact(tmp_path_factory):
    enc = ChatEncoder(train_bpe(CORPUS, 300))
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84)
    samples, lengths = _samples(enc, proc)
    packs = _packs(lengths, 128)
    root = tmp_path_factory.mktemp("pack")
    with ArtifactWriter(root / "pack", "pack", 1) as w:
        (w.dir / "plan.parquet").write_bytes(repr(packs).encode())
        names = write_packed_shards(w.dir / "shards", packs, lengths, samples, enc, proc, 2, None)
        (w.dir / "shards.json").write_text(repr(names).replace("'", '"'))
        w.stats.update(capacity=128, plan_digest=digest_file(w.dir / "plan.parquet"))
    return w.artifact, enc, proc, packs


def test_loader_batches_are_well_formed(pack_artifact):
    art, enc, proc, packs = pack_artifact
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
    straight = PackedLoader(art, 2, enc.pad_id, proc, seed=3)
    it = iter(straight)
    reference = [next(it)["sample_ids"] for _ in range(7)]  # crosses an epoch boundary
    first = PackedLoader(art, 2, enc.pad_id, proc, seed=3)
    it = iter(first)
    got = [next(it)["sample_ids"] for _ in range(4)]
    state = first.state_dict()
    resumed = PackedLoader(art, 2, enc.pad_id, proc, seed=3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    got += [next(it)["sample_ids"] for _ in range(3)]
    assert got == reference


def test_resume_on_another_plan_fails(pack_artifact):
    art, enc, proc, _ = pack_artifact
    loader = PackedLoader(art, 2, enc.pad_id, proc)
    state = loader.state_dict() | {"plan_digest": "0" * 32}
    with pytest.raises(ValueError, match="the data changed since the checkpoint"):
        loader.load_state_dict(state)


def _lengths_table(mid_ids: list[str], chunk: int) -> pa.Table:
    rows = [{"sample_id": f"a{i}", "pool": "align", "total": 60 + i, "vit_patches": 16} for i in range(5)]
    rows += [{"sample_id": s, "pool": "mid", "total": 90, "vit_patches": 16} for s in mid_ids]
    table = pa.Table.from_pylist(rows)
    return pa.concat_tables([table.slice(i, chunk) for i in range(0, len(table), chunk)])  # row groups vary too


def test_pool_rows_digest_sees_only_its_own_pools():
    """A new balance manifest changes the mid rows of ``lengths``; the align pack's recorded input must not move
    (else DVC retrains Stage-1 on identical packs), while a change to its own rows must move it."""
    rows, before = pool_rows(_lengths_table(["m1", "m2"], chunk=3), ["align"])
    _, after_balance = pool_rows(_lengths_table(["m2", "m3", "m4"], chunk=2), ["align"])
    assert rows.column("sample_id").to_pylist() == [f"a{i}" for i in range(5)]
    assert after_balance == before
    _, mid_before = pool_rows(_lengths_table(["m1", "m2"], chunk=3), ["mid"])
    _, mid_after = pool_rows(_lengths_table(["m2", "m3", "m4"], chunk=2), ["mid"])
    assert mid_after != mid_before
    changed = _lengths_table(["m1", "m2"], chunk=3)
    changed = changed.set_column(2, "total", pa.array([61] + changed["total"].to_pylist()[1:]))
    assert pool_rows(changed, ["align"])[1] != before


def _shard_input_ids(folder, names: list[str]) -> list[np.ndarray]:
    """``input_ids`` of every packed sample of the named shards, in order."""
    return [np.load(io.BytesIO(raw.files["input_ids.npy"])) for name in names
            for raw in read_shard(folder / f"{name}.tar")]


def _expected_input_ids(enc, proc, samples, packs) -> list[np.ndarray]:
    return [np.concatenate([encode_sample(enc, proc, samples[s][0]["messages"], samples[s][1])[0] for s in pack])
            for pack in packs]


def test_pack_cache_never_serves_shards_of_another_tokenizer(tmp_path, monkeypatch):
    """Reordered special tokens keep every length (the plan and the length check pass) but change the ids:
    a cache keyed by member ids alone would hand back shards with the old tokenizer's ids."""
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84)
    old = ChatEncoder(train_bpe(CORPUS, 300))
    monkeypatch.setattr(tokenizer_module, "SPECIAL_TOKENS", tuple(reversed(tokenizer_module.SPECIAL_TOKENS)))
    new = ChatEncoder(train_bpe(CORPUS, 300))
    samples, lengths = _samples(old, proc)
    assert _samples(new, proc)[1] == lengths and old.image_pad_id != new.image_pad_id
    packs, cache = _packs(lengths, 128), tmp_path / "cache"
    write_packed_shards(tmp_path / "old", packs, lengths, samples, old, proc, 2, cache)
    names = write_packed_shards(tmp_path / "new", packs, lengths, samples, new, proc, 2, cache)
    got, want = _shard_input_ids(tmp_path / "new", names), _expected_input_ids(new, proc, samples, packs)
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_pack_cache_never_serves_a_damaged_entry(tmp_path):
    """A cache file cut short (a kill during the copy, a full disk) or edited is a miss, never an output."""
    enc, proc = ChatEncoder(train_bpe(CORPUS, 300)), ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84)
    samples, lengths = _samples(enc, proc)
    packs, cache = _packs(lengths, 128), tmp_path / "cache"
    names = write_packed_shards(tmp_path / "first", packs, lengths, samples, enc, proc, 2, cache)
    fresh = {n: (tmp_path / "first" / f"{n}.tar").read_bytes() for n in names}
    entries = sorted(p for p in cache.rglob("*.tar"))
    assert len(entries) == len(names)
    entries[0].write_bytes(entries[0].read_bytes()[:700])
    edited = bytearray(entries[-1].read_bytes())
    edited[520] ^= 0xFF  # a byte of the first member's data: same size, other content
    entries[-1].write_bytes(bytes(edited))
    again = write_packed_shards(tmp_path / "again", packs, lengths, samples, enc, proc, 2, cache)
    assert {n: (tmp_path / "again" / f"{n}.tar").read_bytes() for n in again} == fresh


def test_pack_cache_serves_unchanged_shards_across_runs(tmp_path, monkeypatch):
    """The same inputs in a later run (the tokenizer loaded again from its folder) hit: nothing is re-encoded."""
    from transformers import AutoTokenizer

    from llava_ov.packing import materialize

    train_bpe(CORPUS, 300).save_pretrained(tmp_path / "tok")
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84)
    enc = ChatEncoder(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    samples, lengths = _samples(enc, proc)
    packs, cache = _packs(lengths, 128), tmp_path / "cache"
    names = write_packed_shards(tmp_path / "first", packs, lengths, samples, enc, proc, 2, cache)

    def no_encoding(*args, **kwargs):
        raise AssertionError("an unchanged shard was encoded again")

    monkeypatch.setattr(materialize, "encode_pack", no_encoding)
    again = ChatEncoder(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    assert write_packed_shards(tmp_path / "again", packs, lengths, samples, again, proc, 2, cache) == names
    assert all((tmp_path / "again" / f"{n}.tar").read_bytes() == (tmp_path / "first" / f"{n}.tar").read_bytes()
               for n in names)
