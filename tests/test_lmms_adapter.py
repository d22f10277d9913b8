"""lmms-eval adapter: Instance-shaped requests (the real CLI runs a local benchmark in tests/test_lmms_tasks.py)."""

from __future__ import annotations

import pytest
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from PIL import Image

from llava_ov.eval.lmms_adapter import MODEL_ID, LlavaOV15Local, build_prompt
from llava_ov.eval.scoring import Prompt
from tests.test_eval import COLOURS, write_checkpoint

TASK, SPLIT = "colors", "test"


def request(kind: str, args: tuple, idx: int = 0) -> Instance:
    return Instance(kind, args, idx=idx, metadata={"task": TASK, "doc_id": idx, "repeats": 1})


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lmms_ckpt")
    write_checkpoint(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def lm(ckpt_dir):
    model = LlavaOV15Local(pretrained=str(ckpt_dir), batch_size=3)
    model.task_dict = {TASK: {SPLIT: [{"colour": c, "image": Image.new("RGB", (64, 64), c)} for c in COLOURS]}}
    return model


def visual(doc):
    return [doc["image"]]


def test_registered_through_the_entry_point():
    assert get_model(MODEL_ID) is LlavaOV15Local


def test_loglikelihood_matches_the_scorer(lm):
    reqs = [request("loglikelihood", ("what color is the shape?", c, visual, i, TASK, SPLIT), i)
            for i, c in enumerate(COLOURS)]
    got = lm.loglikelihood(reqs)
    docs = lm.task_dict[TASK][SPLIT]
    want = lm.scorer.loglikelihood([(build_prompt("what color is the shape?", [d["image"]]), [c])
                                    for d, c in zip(docs, COLOURS)], close_turn=False)
    assert [ll for ll, _ in got] == pytest.approx([w[0].logprob for w in want])
    assert all(isinstance(g, bool) for _, g in got)


def test_generate_until_applies_stop_strings_and_lengths(lm):
    docs = lm.task_dict[TASK][SPLIT]
    full = lm.scorer.generate([build_prompt("what color is the shape?", [d["image"]]) for d in docs], 6)
    reqs = [request("generate_until", ("what color is the shape?", {"max_new_tokens": 6, "until": [full[0][1:3]]},
                                       visual, i, TASK, SPLIT), i) for i in range(len(docs))]
    out = lm.generate_until(reqs)
    assert out[0] == full[0].split(full[0][1:3])[0].strip()
    short = lm.generate_until([request("generate_until", ("what color is the shape?", {"max_new_tokens": 1},
                                                           visual, 1, TASK, SPLIT))])
    assert len(lm.scorer.ckpt.tokenizer.encode(short[0])) <= 1
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([request("generate_until", ("q", {"temperature": 0.7}, visual, 0, TASK, SPLIT))])


def test_multi_round_keeps_the_dialogue(lm):
    calls = []

    def next_round(doc, previous_output, round_idx, previous_round_info):
        calls.append((round_idx, list(previous_output)))
        return None, "and now?", round_idx >= 2, previous_output, {"round": round_idx}

    out = lm.generate_until_multi_round([request(
        "generate_until_multi_round", ("what color is the shape?", {"max_new_tokens": 3}, visual, next_round, 0,
                                       TASK, SPLIT))])
    assert len(out) == 1 and len(out[0]) == 2
    assert [c[0] for c in calls] == [1, 2] and calls[1][1] == list(out[0])
    second = Prompt("and now?", (build_prompt("", [lm.task_dict[TASK][SPLIT][0]["image"]]).images[0],),
                    (("<image>\nwhat color is the shape?", out[0][0]),))
    assert lm.scorer.generate([second], 3)[0].strip() == out[0][1]
