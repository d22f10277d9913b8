"""Packing plan (exactly-once, both budgets, near the lower bound) and the packed loader."""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from llava_ov.artifacts import ArtifactWriter, digest_file
from llava_ov.packing.lengths import pool_rows
from llava_ov.packing.loader import IGNORE, PackedLoader
from llava_ov.packing.materialize import TAR_BLOCK, pack_bytes, packs_per_shard, write_packed_shards
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


def test_pack_bytes_predicts_a_packs_bytes_in_its_shard(pack_artifact):
    """``pack.<stage>.shard_bytes`` sets the file count through this estimate, made before a pack is encoded."""
    art = pack_artifact[0]
    members = defaultdict(dict)
    for shard in sorted((art.path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, name = m.name.partition(".")
                members[key][name] = tar.extractfile(m).read()
    assert members
    for files in members.values():
        actual = sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for data in files.values())
        tokens = np.load(io.BytesIO(files["input_ids.npy"])).size
        images = [data for name, data in files.items() if name.endswith(".png")]
        assert abs(pack_bytes(tokens, images) - actual) <= TAR_BLOCK, (tokens, len(images), actual)


def test_packs_per_shard_from_target_bytes():
    assert packs_per_shard([1_000_000, 3_000_000], 2_000_000_000) == 1000
    assert packs_per_shard([5_000], 1_000) == 1  # a pack larger than the target is a shard of its own


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
