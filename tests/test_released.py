"""Released mode, pool level: exact duplicates (ingest.dedupe) and the published Mid-Training filters
(ingest.filters)."""

from __future__ import annotations

import tarfile

import pytest
import yaml

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data import ingest
from llava_ov.data.admission import derived_id
from llava_ov.data.reader import index, iter_samples, open_ingest
from llava_ov.data.released import validate_released
from llava_ov.data.sources import Candidate, one_turn
from tests import released_data as rd
from tests.project import REPO

X, Y, Z = (("<image>\nDescribe.", f"noise {i}", rd.image(i)) for i in range(3))


def _llava(key: str, sample: tuple) -> dict:
    return rd.llava(key, *sample)


@pytest.fixture()
def duplicates(tmp_path):
    """X three times across two files (once again in the first file), under different keys."""
    folder = tmp_path / "data" / "align"
    rd.wds_shard(folder, [_llava("k1", X), _llava("k2", Y), _llava("k3", X)], pattern="pretrain-0%d.tar")
    rd.wds_shard(folder, [_llava("k4", X), _llava("k5", Z), _llava("k6", X)], pattern="pretrain-1%d.tar")
    return tmp_path


def _ingest(root, dedupe: bool, name: str = "ingest"):
    cfg = {"released": {"align": "data/align"}, "dedupe": dedupe}
    with ArtifactWriter(root / "artifacts" / name, "ingest", 1) as w:
        metrics = validate_released(cfg, root, w.dir)
    return w.artifact, metrics


def _keys_in(path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".", 1)[0] for m in tar})


def test_without_dedupe_every_duplicate_is_kept_under_a_stable_id_of_its_own(duplicates):
    art, metrics = _ingest(duplicates, dedupe=False)
    assert metrics["kept"] == 6 and metrics["rejected"] == 0
    ids = {meta["origin"]: row["sample_id"] for row, meta, _ in iter_samples(open_ingest(art.path), ("align",))}
    content = ids["pretrain-00.tar:k1"]  # the first occurrence, in sorted file order, keeps the content id
    assert ids == {"pretrain-00.tar:k1": content, "pretrain-00.tar:k2": ids["pretrain-00.tar:k2"],
                   "pretrain-00.tar:k3": derived_id(content, "pretrain-00.tar", "k3"),
                   "pretrain-10.tar:k4": derived_id(content, "pretrain-10.tar", "k4"),
                   "pretrain-10.tar:k5": ids["pretrain-10.tar:k5"],
                   "pretrain-10.tar:k6": derived_id(content, "pretrain-10.tar", "k6")}
    assert len(set(ids.values())) == 6
    assert _keys_in(art / "align" / "pretrain-10.tar") == sorted([ids["pretrain-10.tar:k4"], ids["pretrain-10.tar:k5"],
                                                                  ids["pretrain-10.tar:k6"]])
    again, _ = _ingest(duplicates, dedupe=False, name="again")
    assert again.digest == art.digest


def test_with_dedupe_duplicates_are_counted_rejections_and_leave_no_bytes(duplicates):
    art, metrics = _ingest(duplicates, dedupe=True)
    assert metrics["kept"] == 3 and metrics["rejected"] == 3
    assert metrics["reject_reasons"] == {"duplicate sample_id in pool align": 3}
    assert sorted(r["where"] for r in iter_jsonl(art / "rejects.jsonl")) == [
        "pretrain-00.tar:k3", "pretrain-10.tar:k4", "pretrain-10.tar:k6"]
    assert metrics["files"]["data/align/pretrain-10.tar"] == {"format": "llava_conversations", "samples": 3,
                                                              "kept": 1, "rejected": 2}
    kept = [r["sample_id"] for r in index(open_ingest(art.path))]
    assert _keys_in(art / "align" / "pretrain-00.tar") + _keys_in(art / "align" / "pretrain-10.tar") == sorted(
        kept[:2]) + kept[2:]  # the artifact holds exactly the kept samples


def test_embedded_duplicates_follow_the_same_rule(tmp_path, monkeypatch):
    def twice(sizes, rng):
        for _ in range(2):
            yield Candidate("demo", "align", "caption", one_turn("What is it?", "noise"), [rd.image(9)])

    monkeypatch.setitem(ingest.GENERATORS, "demo", twice)
    for dedupe, kept in ((True, 1), (False, 2)):
        with ArtifactWriter(tmp_path / str(dedupe), "ingest", 1) as w:
            metrics = ingest.build_embedded({"sources": {"demo": {"align": 2}}, "dedupe": dedupe}, 0, w.dir)
        assert metrics["kept"] == kept and metrics["total"] == 2
    ids = [r["sample_id"] for r in index(open_ingest(tmp_path / "False"))]
    assert ids[1] == derived_id(ids[0], "demo", "1")


FILTERED = {  # parquet id -> (caption, black image?, reason when the published filters are on)
    "ok": (rd.caption(0), False, None),
    "short": ("A short caption.", False, "caption shorter than 50 characters (16)"),
    "long": ("word " * 701, False, "caption longer than 3500 characters (3505)"),
    "refusal": ("I'm sorry, but I cannot describe this image in the level of detail you want.", False,
                "caption starts with a refusal (\"i'm sorry\")"),
    "cannot": ("I CANNOT see anything in this picture, it is a field of random coloured noise.", False,
               "caption starts with a refusal ('i cannot')"),
    "repeat": ("The picture shows very very very very very very very very bright noise, nothing else.", False,
               "caption repeats one word 8 times in a row ('very')"),
    "seven": ("The picture shows very very very very very very very bright noise and nothing else.", False, None),
    "black": (rd.caption(1), True, "image 0 is all black"),
}


@pytest.fixture()
def captions(tmp_path):
    rd.parquet(tmp_path / "data" / "mid" / "part" / "train-0.parquet",
               [{"id": key, "image": rd.image(i, fmt="PNG", black=black), "path": f"{key}.png", "caption": text}
                for i, (key, (text, black, _)) in enumerate(FILTERED.items())], row_group_size=3)
    return tmp_path


def _filtered(root, filters: dict | None):
    cfg = {"released": {"mid": "data/mid"}, **({"filters": filters} if filters is not None else {})}
    with ArtifactWriter(root / "artifacts" / "ingest", "ingest", 1) as w:
        metrics = validate_released(cfg, root, w.dir)
    return w.artifact, metrics


def test_the_published_filters_are_off_by_default(captions):
    _, metrics = _filtered(captions, None)
    assert metrics["kept"] == len(FILTERED) and metrics["rejected"] == 0


@pytest.mark.parametrize("profile", ["4b", "8b"])
def test_the_published_filters_of_the_real_profiles_reject_each_case_with_its_reason(captions, profile):
    filters = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())["ingest"]["filters"]
    art, metrics = _filtered(captions, filters)
    expected = {f"part/train-0.parquet:{row}": reason for row, (_, _, reason) in enumerate(FILTERED.values())
                if reason}
    assert {r["where"]: r["reason"] for r in iter_jsonl(art / "rejects.jsonl")} == expected
    assert metrics["kept"] == len(FILTERED) - len(expected) and metrics["rejected"] == len(expected)
    assert sum(metrics["reject_reasons"].values()) == len(expected) == 6


def test_an_unknown_filter_is_a_clear_error(captions):
    with pytest.raises(ValueError, match=r"ingest.filters: unknown filter\(s\) \['min_chars'\]"):
        _filtered(captions, {"mid": {"min_chars": 50}})
