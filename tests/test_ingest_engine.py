"""ingest on the shard engine: the same artifact on any executor, per-file caching of released files, offsets that
seek each sample, errors from inside Ray tasks, and a driver whose memory does not grow with the samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data.ingest import build_embedded
from llava_ov.data.released import validate_released
from llava_ov.data.shards import ShardError, read_sample_at, read_shard
from llava_ov.engine import Engine
from tests import released_data as rd
from tests.project import REPO

SAMPLE = ("<image>\nDescribe.", "noise")


@pytest.fixture(scope="module")
def ray_engine():
    """A local Ray of 2 CPUs, started once for the module (each start costs ~5-15 s here)."""
    address = os.environ.pop("RAY_ADDRESS", None)
    engine = Engine(executor="ray", cpus=2)
    with engine.session():
        yield engine
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


def smoke_ingest() -> dict:
    """The smoke profile's ``ingest`` params (params.yaml overlaid with profiles/smoke.yaml)."""
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]
    cfg.update(yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())["ingest"])
    return cfg


def assert_offsets_seek_every_sample(path) -> None:
    """Each index row's (offset, size) reads exactly that sample back, and each shard holds exactly its rows."""
    rows = pq.read_table(path / "index.parquet").to_pylist()
    by_shard: dict[str, dict] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    for shard, keyed in by_shard.items():
        read = {raw.key: raw for raw in read_shard(path / shard)}
        assert sorted(read) == sorted(keyed), shard
        for key, row in keyed.items():
            one = read_sample_at(path / shard, row["offset"], row["size"], key)
            assert one.files == read[key].files and (row["offset"], row["size"]) == (read[key].offset, read[key].size)


def _embedded(path, engine):
    with ArtifactWriter(path, "ingest", 1) as w:
        metrics = build_embedded(smoke_ingest(), 0, w.dir, engine=engine)
    return w.artifact, metrics


def test_embedded_local_and_ray_give_the_same_artifact(ray_engine, tmp_path):
    local, metrics = _embedded(tmp_path / "local", Engine(executor="local"))
    on_ray, _ = _embedded(tmp_path / "ray", ray_engine)
    assert on_ray.digest == local.digest
    assert metrics["total"] == sum(sum(s.values()) for s in smoke_ingest()["sources"].values())
    assert_offsets_seek_every_sample(local.path)


@pytest.fixture()
def released(tmp_path):
    """Three pools over several files: duplicates within and across files (so shards get rewritten), an eval image
    and an eval sample shared with training, and a parquet file."""
    data = tmp_path / "data" / "released"
    x, y, z = (rd.image(i) for i in range(3))
    rd.wds_shard(data / "align", [rd.llava("a1", *SAMPLE, x), rd.llava("a2", "<image>\nWhat?", "y", y),
                                  rd.llava("a3", *SAMPLE, x)], pattern="part-0%d.tar")
    rd.wds_shard(data / "align", [rd.llava("b1", "<image>\nWhat?", "z", z), rd.llava("b2", *SAMPLE, x)],
                 pattern="part-1%d.tar")
    rd.parquet(data / "mid" / "train-0.parquet",
               [{"id": f"m{i}", "image": rd.image(10 + i, fmt="PNG"), "path": f"m{i}.png", "caption": rd.caption(i)}
                for i in range(5)])
    rd.wds_shard(data / "eval", [rd.llava("e1", "<image>\nAgain?", "no", y), rd.llava("e2", *SAMPLE, x),
                                 rd.llava("e3", "<image>\nFresh?", "yes", rd.image(20)),
                                 rd.llava("e4", "<image>\nFresh?", "yes", rd.image(20))], pattern="eval-%d.tar")
    return tmp_path, {"released": {p: f"data/released/{p}" for p in ("align", "mid", "eval")}}


def _released(root, cfg, name, engine=Engine(executor="local"), cache=None):
    with ArtifactWriter(root / "artifacts" / name, "ingest", 1) as w:
        metrics = validate_released(cfg, root, w.dir, cache=cache, engine=engine)
    return w.artifact, metrics


@pytest.mark.parametrize("dedupe", [False, True])
def test_released_local_and_ray_give_the_same_artifact(ray_engine, released, dedupe):
    root, cfg = released
    cfg = {**cfg, "dedupe": dedupe}
    local, metrics = _released(root, cfg, "local")
    on_ray, _ = _released(root, cfg, "ray", ray_engine)
    assert on_ray.digest == local.digest
    reasons = {r["where"]: r["reason"] for r in iter_jsonl(local / "rejects.jsonl")}
    assert {k: v for k, v in reasons.items() if k.startswith("eval")} == {
        "eval-0.tar:e1": "eval image also in a training pool", "eval-0.tar:e2": "eval image also in a training pool",
        **({"eval-0.tar:e4": "duplicate sample_id in pool eval"} if dedupe else {})}
    kept_align = 3 if dedupe else 5  # x once (dedupe) or three times, y, z
    assert metrics["pool_counts"]["align"] == {"samples": 5, "kept": kept_align, "rejected": 5 - kept_align}
    assert metrics["files"]["data/released/align/part-10.tar"]["kept"] == (1 if dedupe else 2)
    assert_offsets_seek_every_sample(local.path)  # the rewritten shards too


def test_a_truncated_shard_inside_a_ray_task_stops_the_stage_naming_it(ray_engine, released):
    root, cfg = released
    shard = root / "data" / "released" / "align" / "part-10.tar"
    shard.write_bytes(shard.read_bytes()[:-1500])
    with pytest.raises(ShardError, match=r"shard \S*part-10.tar is truncated"):
        _released(root, cfg, "ingest", ray_engine)
    assert not (root / "artifacts" / "ingest").exists()


def test_adding_one_file_converts_only_that_file(released):
    root, cfg = released
    cache = root / "cache"
    first, m1 = _released(root, cfg, "first", cache=cache)
    files = m1["cache"]["files"]
    assert m1["cache"] == {"files": files, "hashed": files, "converted": files}
    again, m2 = _released(root, cfg, "again", cache=cache)
    assert m2["cache"] == {"files": files, "hashed": 0, "converted": 0} and again.digest == first.digest

    rd.wds_shard(root / "data" / "released" / "align", [rd.llava("c1", "<image>\nNew?", "new", rd.image(30))],
                 pattern="part-2%d.tar")
    added, m3 = _released(root, cfg, "added", cache=cache)
    assert m3["cache"] == {"files": files + 1, "hashed": 1, "converted": 1}
    fresh, _ = _released(root, cfg, "fresh")  # no cache: every file converted anew
    assert added.digest == fresh.digest

    touched = root / "data" / "released" / "mid" / "train-0.parquet"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    _, m4 = _released(root, cfg, "touched", cache=cache)
    assert m4["cache"] == {"files": files + 1, "hashed": 1, "converted": 0}  # same bytes: re-hashed, not converted


def test_the_driver_does_not_hold_memory_per_sample(tmp_path):
    """The driver's peak RSS on 1M samples exceeds that on 200K by a few bytes per extra sample (the sort that finds
    duplicates: 8), where the old ledger held a dict per kept row (~1 KB). Same part size and several index row
    groups in both runs, so only the number of samples differs."""
    peaks = {}
    for n_parts in (100, 500):
        parts, out = tmp_path / f"parts{n_parts}", tmp_path / f"out{n_parts}"
        subprocess.run([sys.executable, "-m", "tests.driver_memory", "write", str(parts), str(n_parts), "2000"],
                       cwd=REPO, check=True)
        done = subprocess.run([sys.executable, "-m", "tests.driver_memory", "assemble", str(parts), str(out)],
                              cwd=REPO, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["kept"] == n_parts * 2000 + 100
        peaks[n_parts] = result["peak_rss"]
    growth = (peaks[500] - peaks[100]) / (400 * 2000)
    assert growth < 16, f"driver peak RSS grew {growth:.1f} bytes per sample ({peaks})"
