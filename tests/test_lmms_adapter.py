"""lmms-eval adapter: Instance-shaped requests, and a real `lmms-eval eval` run over a local task YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from PIL import Image

from llava_ov.eval.lmms_adapter import MODEL_ID, LlavaOV15Local, build_prompt
from llava_ov.eval.scoring import Prompt
from tests.test_eval import COLOURS, png, write_checkpoint

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


def test_lmms_eval_cli_runs_a_local_task(ckpt_dir, tmp_path):
    """`lmms-eval eval --model llava_onevision1_5_local` end to end on a local JSON task, offline."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    docs = task_dir / "docs.jsonl"
    with open(docs, "w") as f:
        for i, colour in enumerate(COLOURS):
            (task_dir / f"{i}.png").write_bytes(png(colour))
            f.write(json.dumps({"image": str(task_dir / f"{i}.png"), "question": "what color is the shape?",
                                "answer": colour}) + "\n")
    (task_dir / "utils.py").write_text(
        "from PIL import Image\n\n\ndef doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n")
    (task_dir / "colors_local.yaml").write_text(
        f"task: colors_local\ndataset_path: json\ndataset_kwargs:\n  data_files: {{test: {docs}}}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: question\ndoc_to_target: answer\ngeneration_kwargs:\n  max_new_tokens: 4\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "out"
    result = subprocess.run([str(Path(sys.executable).with_name("lmms-eval")), "eval", "--model", MODEL_ID,
                             "--model_args", f"pretrained={ckpt_dir}", "--tasks", "colors_local",
                             "--include_path", str(task_dir), "--output_path", str(out), "--log_samples",
                             "--batch_size", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert results["results"]["colors_local"]["exact_match,none"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert results["n-samples"]["colors_local"]["effective"] == len(COLOURS)
    samples = [json.loads(line) for line in next(out.rglob("*_samples_colors_local.jsonl")).read_text().splitlines()]
    assert len(samples) == len(COLOURS) and all("filtered_resps" in s for s in samples)
