"""Packing plan (exactly-once, both budgets, near the lower bound) and the packed loader."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from llava_ov.artifacts import ArtifactWriter, digest_file
from llava_ov.packing.lengths import pool_rows
from llava_ov.packing.loader import IGNORE, PackedLoader
from llava_ov.packing.materialize import write_packed_shards
from llava_ov.packing.plan import first_fit_decreasing, plan_packs
from llava_ov.text.template import ChatEncoder
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


@pytest.fixture(scope="module")
def pack_artifact(tmp_path_factory):
    tok = train_bpe(["what colour is it", "red", "blue", "a caption of a shape"] * 10, 300)
    enc = ChatEncoder(tok)
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84)
    samples, lengths = {}, {}
    for i in range(12):
        meta = {"messages": [{"role": "user", "content": "<image>\nwhat colour is it"},
                             {"role": "assistant", "content": "red" if i % 2 else "blue"}]}
        images = [_png(56 + 28 * (i % 2), (i * 20, 0, 0))]
        sid = f"s{i:02d}"
        samples[sid] = (meta, images)
        grid = proc.grid(56 + 28 * (i % 2), 56 + 28 * (i % 2))
        lengths[sid] = len(enc.encode(meta["messages"], [proc.num_image_tokens(grid)])[0])
    ids = sorted(samples)
    plan = plan_packs(np.array([lengths[s] for s in ids]), 128)
    packs = [[ids[j] for j in plan.members[a:b]] for a, b in zip(plan.offsets[:-1], plan.offsets[1:])]
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
