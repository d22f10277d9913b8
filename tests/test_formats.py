"""Released mode reads every published format (issue 14): one file of each, as the published scripts write it.

Each well-formed sample is kept, converted into the artifact's one schema, and goes through ``lengths`` (the code
the loader runs); each bad one is a rejection with its reason; counts reconcile per file and per pool; two runs
give a byte-identical artifact; the format is told per file, and a file of no known format or of two formats
stops the stage naming it.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from llava_ov.artifacts import ArtifactWriter, iter_jsonl
from llava_ov.data.formats import FormatError, source_format
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.data.released import validate_released
from llava_ov.data.shards import ShardError, ShardWriter
from llava_ov.packing.lengths import encode_sample, sample_lengths
from llava_ov.text.template import ChatEncoder
from llava_ov.text.tokenizer import train_bpe
from llava_ov.vision.image_processing import ImageProcessor
from tests import released_data as rd

SYSTEM = {"role": "system", "content": "You describe images briefly."}


def _qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _llava(folder):
    return rd.wds_shard(folder, [
        rd.llava("004539375", "<image>\nRender a clear and concise summary of the photo.", "noise in colour",
                 rd.image(1)),
        rd.llava("004539376", "What is this?\n<image>", "more noise", rd.image(2)),
        rd.llava("004539377", "<image>\nDescribe.", "noise again", rd.image(3), system="Be brief."),
        {**rd.llava("bad_speaker", "<image>\nQ", "A", rd.image(4)),
         "json": [{"from": "human", "value": "<image>\nQ"}, {"from": "bot", "value": "A"}]},
        rd.llava("bad_image", "<image>\nQ", "A", rd.image(5)[:200]),
    ])


def _messages(folder):
    return rd.wds_shard(folder, [
        rd.messages("vqa.0001", _qa("<image>\nWhat colour dominates?", "none"), rd.image(10)),
        rd.messages("vqa.0002", [SYSTEM, *_qa("<image>\nDescribe it.", "static"),
                                 *_qa("Any shapes?", "no")], rd.image(11)),
        rd.messages("vqa.0003", _qa("What colour?", "blue"), rd.image(12)),  # no placeholder for its image
    ], pattern="messages-%d.tar")


def _without(sample: dict, member: str) -> dict:
    return {k: v for k, v in sample.items() if k != member}


def _mix(folder):
    return rd.wds_shard(folder, [
        rd.mix(0, _qa("<image> and <image>: which is brighter?", "the first"),
               files={"photos/left.v2.jpg": rd.image(20), "photos/right.png": rd.image(21, fmt="PNG")}),
        rd.mix(1, [SYSTEM, *_qa("<image>\nWhat is shown?", "noise")], files={"a/b.c.d.jpg": rd.image(22)}),
        rd.mix(2, _qa("What is two plus two?", "Four."), media="text"),
        rd.mix(3, [SYSTEM, *_qa("Name a colour.", "Red.")], media="text"),
        rd.mix(4, _qa("<video>\nWhat happens?", "nothing"), media="video", files={"clips/x.mp4": b"\0" * 64}),
        _without(rd.mix(5, _qa("<image>\nQ", "A"), files={"x.jpg": rd.image(23)}), "0_x.jpg"),  # named, absent
    ], pattern="mix-%d.tar")


def _packed(folder):
    return rd.wds_shard(folder, [
        rd.packed(0, [rd.image(30 + i) for i in range(3)], [rd.caption(i) for i in range(3)], []),
        rd.packed(1, [rd.image(40), rd.image(41)], [{"content": rd.caption(10)}, {"content": rd.caption(11)}],
                  ["Describe the image.", "<image>\nWhat is in this picture?"]),
        rd.packed(2, [rd.image(50), rd.image(51)], [rd.caption(20)], []),  # 2 images, 1 caption: whole group
    ], pattern="pretrain-%06d.tar")


def _parquet(path):
    return rd.parquet(path, [
        {"id": "coyo/000/1.jpg", "image": rd.image(60), "path": "1.jpg", "caption": rd.caption(60)},
        {"id": "coyo/000/2.jpg", "image": rd.image(61, fmt="PNG"), "path": None, "caption": rd.caption(61)},
        {"id": "coyo/000/3.jpg", "image": None, "path": None, "caption": rd.caption(62)},
        {"id": "coyo/000/4.jpg", "image": rd.image(63, size=(400, 1), fmt="PNG"), "path": "4.png",
         "caption": rd.caption(63)},
        {"id": "coyo/000/5.jpg", "image": rd.image(64, size=(200, 1), fmt="PNG"), "path": "5.png",
         "caption": rd.caption(64)},
    ])


def _internal(folder):
    folder.mkdir(parents=True)
    with ShardWriter(folder, "eval") as w:
        meta = {"messages": _qa("<image>\nIs it noise?", "yes"), "source": "noise-vqa", "task": "noise",
                "answer": "yes", "choices": ["no", "yes"]}
        w.write("e0", {"json": json.dumps(meta).encode(), "0.png": rd.image(70, fmt="PNG")})
    return w.shards[0]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A project root with one pool folder per released dataset, every format represented."""
    root = tmp_path_factory.mktemp("released")
    data = root / "data" / "released"
    files = {"llava": _llava(data / "llava-558k"), "messages": _messages(data / "instruct"),
             "mix": _mix(data / "instruct"), "packed": _packed(data / "mid-training-85m"),
             "parquet": _parquet(data / "mid-training-85m" / "part-a" / "sub" / "train-00000.parquet"),
             "internal": _internal(data / "eval")}
    cfg = {"released": {"align": "data/released/llava-558k", "mid": "data/released/mid-training-85m",
                        "instruct": "data/released/instruct", "eval": "data/released/eval"}}
    return root, files, cfg


def _ingest(root, cfg, name="ingest"):
    with ArtifactWriter(root / "artifacts" / name, "ingest", 1) as w:
        metrics = validate_released(cfg, root, w.dir)
    return w.artifact, metrics


EXPECTED_FILES = {  # file (relative to the project root) -> format, kept, rejected
    "data/released/llava-558k/pretrain-0.tar": ("llava_conversations", 3, 2),
    "data/released/instruct/messages-0.tar": ("messages", 2, 1),
    "data/released/instruct/mix-0.tar": ("mix", 4, 2),
    "data/released/mid-training-85m/pretrain-000000.tar": ("packed_captions", 5, 2),
    "data/released/mid-training-85m/part-a/sub/train-00000.parquet": ("parquet_captions", 3, 2),
    "data/released/eval/eval-000000.tar": ("internal", 1, 0),
}
EXPECTED_REJECTS = {  # where -> reason (prefix)
    "pretrain-0.tar:bad_speaker": "turn 1 has from 'bot', not one of ['gpt', 'human', 'system']",
    "pretrain-0.tar:bad_image": "image 0.jpg is corrupt or truncated",
    "messages-0.tar:vqa_0003": "0 <image> placeholder(s) but 1 image(s)",
    "mix-0.tar:video_4": "video samples are not supported",
    "mix-0.tar:image_5": "image member '0_x.jpg' named in the json is missing",
    "pretrain-000000.tar:ps_00000002#0": "packed group: image, caption and prompt counts differ (2, 1, 0)",
    "pretrain-000000.tar:ps_00000002#1": "packed group: image, caption and prompt counts differ (2, 1, 0)",
    "part-a/sub/train-00000.parquet:2": "row has no image bytes",
    "part-a/sub/train-00000.parquet:3": "image 0.png has an aspect ratio over 200 (400x1; smart_resize refuses it)",
}


def test_every_published_format_is_read_converted_and_accounted_for(released):
    root, files, cfg = released
    art, metrics = _ingest(root, cfg)
    assert {f: (m["format"], m["kept"], m["rejected"]) for f, m in metrics["files"].items()} == EXPECTED_FILES
    assert all(m["samples"] == m["kept"] + m["rejected"] for m in metrics["files"].values())
    assert metrics["total"] == sum(m["samples"] for m in metrics["files"].values()) == 27
    assert metrics["pool_counts"] == {"align": {"samples": 5, "kept": 3, "rejected": 2},
                                      "mid": {"samples": 12, "kept": 8, "rejected": 4},
                                      "instruct": {"samples": 9, "kept": 6, "rejected": 3},
                                      "eval": {"samples": 1, "kept": 1, "rejected": 0}}
    rejects = {r["where"]: r for r in iter_jsonl(art / "rejects.jsonl")}
    assert set(rejects) == set(EXPECTED_REJECTS)
    for where, reason in EXPECTED_REJECTS.items():
        assert rejects[where]["reason"].startswith(reason), where
    assert rejects["part-a/sub/train-00000.parquet:2"]["sample_id"] == "coyo/000/3.jpg"  # the id the data claims
    shards = json.loads((art / "shards.json").read_text())
    assert shards["data/released/instruct/mix-0.tar"]["shard"] == "instruct/mix-0.tar"
    assert shards["data/released/mid-training-85m/part-a/sub/train-00000.parquet"]["shard"] == \
        "mid/part-a__sub__train-00000.tar"


def test_converted_samples_hold_the_published_content(released):
    root, files, cfg = released
    art, _ = _ingest(root, cfg)
    samples = {meta["origin"]: (row, meta, images)
               for row, meta, images in iter_samples(open_ingest(art.path), ("align", "mid", "instruct", "eval"))}
    _, meta, images = samples["pretrain-0.tar:004539377"]
    assert meta["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "<image>\nDescribe."},
                                {"role": "assistant", "content": "noise again"}]
    assert meta["source"] == "llava-558k" and images == [rd.image(3)]
    row, meta, images = samples["mix-0.tar:image_0"]
    assert images == [rd.image(20), rd.image(21, fmt="PNG")] and row["n_images"] == 2  # in the order of 'name'
    assert samples["mix-0.tar:text_3"][1]["messages"][0] == SYSTEM and samples["mix-0.tar:text_3"][0]["n_images"] == 0
    group = [samples[f"pretrain-000000.tar:ps_00000001#{i}"] for i in range(2)]
    assert [m["messages"][0]["content"] for _, m, _ in group] == ["<image>\nDescribe the image.",
                                                                   "<image>\nWhat is in this picture?"]
    assert [m["messages"][1]["content"] for _, m, _ in group] == [rd.caption(10), rd.caption(11)]
    assert [samples[f"pretrain-000000.tar:ps_00000000#{i}"][1]["messages"][0]["content"] for i in range(3)] == \
        ["<image>"] * 3
    row, meta, images = samples["part-a/sub/train-00000.parquet:1"]
    assert meta["messages"] == _qa("<image>", rd.caption(61)) and images == [rd.image(61, fmt="PNG")]
    assert samples["eval-000000.tar:e0"][1]["task"] == "noise"  # the internal schema keeps its fields
    assert all(row["key"] == row["sample_id"] == meta["id"] for row, meta, _ in samples.values())


def test_every_kept_sample_goes_through_lengths_with_loss_only_on_assistant_tokens(released):
    root, files, cfg = released
    art, _ = _ingest(root, cfg)
    kept = list(iter_samples(open_ingest(art.path), ("align", "mid", "instruct", "eval")))
    encoder = ChatEncoder(train_bpe([m["content"] for _, meta, _ in kept for m in meta["messages"]], 400))
    processor = ImageProcessor(min_pixels=3136, max_pixels=12544)
    for row, meta, images in kept:
        assert sample_lengths(encoder, processor, meta["messages"], images)["total"] > 0
        ids, mask, _ = encode_sample(encoder, processor, meta["messages"], images)
        trained = "".join(m["content"] + "<|im_end|>" for m in meta["messages"] if m["role"] == "assistant")
        assert encoder.tokenizer.decode(ids[mask]) == trained, meta["origin"]


def test_two_runs_give_the_same_artifact(released):
    root, files, cfg = released
    a, _ = _ingest(root, cfg, "a")
    b, _ = _ingest(root, cfg, "b")
    assert a.digest == b.digest


@pytest.mark.parametrize("name, fmt", [("llava", "llava_conversations"), ("messages", "messages"), ("mix", "mix"),
                                       ("packed", "packed_captions"), ("parquet", "parquet_captions"),
                                       ("internal", "internal")])
def test_the_format_is_told_per_file(released, name, fmt):
    _, files, _ = released
    assert source_format(files[name], "auto") == fmt


def _tar(path, members: dict[str, bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_file_mixing_formats_is_an_error_naming_it(tmp_path):
    llava = json.dumps([{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]).encode()
    bare = json.dumps(_qa("<image>\nQ", "B")).encode()
    path = _tar(tmp_path / "data" / "align" / "mixed.tar", {"a.jpg": rd.image(1), "a.json": llava,
                                                             "b.jpg": rd.image(2), "b.json": bare})
    with pytest.raises(FormatError, match=r"mixed\.tar: mixes formats: 'llava_conversations' .* 'messages'"):
        _ingest(tmp_path, {"released": {"align": "data/align"}})
    assert not (tmp_path / "artifacts" / "ingest").exists()
    # Named in params, the format is not told per file: the odd sample is a rejection instead.
    art, metrics = _ingest(tmp_path, {"released": {"align": "data/align"}, "formats": {"align": "messages"}})
    assert metrics["kept"] == 1 and metrics["reject_reasons"] == {"json does not fit format 'messages'": 1}
    assert path.name in next(iter(metrics["files"]))


def test_a_file_of_no_known_format_is_an_error_naming_it(tmp_path):
    _tar(tmp_path / "data" / "align" / "coyo-0.tar", {"a.jpg": rd.image(1), "a.txt": b"a caption"})
    with pytest.raises(FormatError, match=r"coyo-0\.tar: unknown format"):
        _ingest(tmp_path, {"released": {"align": "data/align"}})


def test_an_unknown_format_name_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="ingest.formats: unknown format"):
        _ingest(tmp_path, {"released": {"align": "data/align"}, "formats": {"align": "laion"}})


def test_a_truncated_parquet_file_is_an_error_naming_it(tmp_path):
    path = _parquet(tmp_path / "data" / "mid" / "a" / "train-0.parquet")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"parquet file \S*train-0\.parquet is truncated or unreadable"):
        _ingest(tmp_path, {"released": {"mid": "data/mid"}})
    assert not (tmp_path / "artifacts" / "ingest").exists()


def test_a_parquet_file_without_the_release_columns_is_an_error_naming_it(tmp_path):
    path = tmp_path / "data" / "mid" / "other.parquet"
    path.parent.mkdir(parents=True)
    rd.pq.write_table(rd.pa.table({"url": ["x"], "text": ["y"]}), path)
    with pytest.raises(FormatError, match=r"other\.parquet: parquet without column\(s\) \['id', 'image', 'caption'\]"):
        _ingest(tmp_path, {"released": {"mid": "data/mid"}})
