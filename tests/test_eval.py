"""Evaluation: scoring matches plain forwards, tasks are hash-pinned, results are cached by content digests."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from llava_ov.eval import runner
from llava_ov.eval.blind import BlindBaseline, question_pattern
from llava_ov.eval.cache import ResultCache
from llava_ov.eval.checkpoint import load_checkpoint
from llava_ov.eval.runner import category_metrics, evaluate, split_tasks
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.eval.tasks import SPEC_DIR, Task, build_task, load_spec
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import build_config
from llava_ov.text.tokenizer import special_ids, train_bpe
from llava_ov.vision.image_processing import ImageProcessor

COLOURS = ["red", "blue", "green", "yellow"]


def png(colour: str, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def write_checkpoint(folder, seed: int) -> None:
    """A tiny LLaVA-OV-1.5 Hugging Face folder (random weights from ``seed``)."""
    tok = train_bpe(["what color is the shape? " + " ".join(COLOURS) + " yes no circle"] * 20, 300)
    ids = special_ids(tok)
    cfg = build_config("tiny", vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2),
                       text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, vocab_size=len(tok)),
                       image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                       vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    LlavaOV15ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    ImageProcessor(min_pixels=56 * 56, max_pixels=84 * 84).save(folder)


def eval_samples(n: int = 6) -> list[tuple[dict, list[bytes]]]:
    out = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        out.append(({"id": f"s{i:02d}", "source": "easyvqa", "category": "general_vqa", "task": "easyvqa",
                     "answer": colour, "choices": sorted(COLOURS),
                     "messages": [{"role": "user", "content": "<image>\nwhat color is the shape?"},
                                  {"role": "assistant", "content": colour}]}, [png(colour, 48 + 8 * i)]))
    return out


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def scorer(ckpt_dir):
    return Scorer(load_checkpoint(ckpt_dir), batch_size=3, vision_batch=2, progress=False)


def test_shared_prefix_loglikelihood_equals_separate_forwards(scorer):
    items = [(Prompt("<image>\nwhat color is the shape?", (png("red"),)), ["red", "blue", "yellow circle"]),
             (Prompt("<image>\nis there a circle?", (png("blue", 80),)), ["yes", "no"]),
             (Prompt("what color is the shape?"), ["green"])]
    scores = scorer.loglikelihood(items)
    model = scorer.ckpt.model
    for (prompt, conts), got in zip(items, scores):
        ids = scorer.encode_prompt(prompt)
        pix = [scorer.ckpt.images(b) for b in prompt.images]
        extra = dict(pixel_values=torch.cat([torch.from_numpy(p) for p, _ in pix]),
                     image_grid_thw=torch.tensor([g for _, g in pix])) if pix else {}
        for cont, score in zip(conts, got):
            cid = scorer.encode_continuation(cont, close_turn=True)
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([ids + cid]), **extra).logits[0].float().log_softmax(-1)
            want = sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(cid))
            assert score.tokens == len(cid)
            assert score.logprob == pytest.approx(want, abs=1e-4)


def test_batched_generation_equals_one_at_a_time(scorer):
    prompts = [Prompt("<image>\nwhat color is the shape?", (png(c, 48 + 16 * i),)) for i, c in enumerate(COLOURS)]
    batched = scorer.generate(prompts, max_new_tokens=4)
    assert batched == [scorer.generate([p], max_new_tokens=4)[0] for p in prompts]


def test_task_digest_pins_spec_and_answers():
    spec = load_spec("easyvqa")
    samples = eval_samples()
    task = build_task(spec, samples)
    assert [it.sample_id for it in task.items] == sorted(s["id"] for s, _ in samples)
    assert build_task(spec, list(reversed(samples))).digest == task.digest  # order of the pool is irrelevant
    changed = [(dict(s, answer="blue") if s["id"] == "s00" else s, im) for s, im in samples]
    assert build_task(spec, changed).digest != task.digest
    assert build_task(dict(spec, max_new_tokens=3), samples).digest != task.digest
    assert len(build_task(spec, samples, max_items=2).items) == 2


def test_task_errors_name_the_problem(tmp_path):
    no_choices = [(dict(s, choices=[]), im) for s, im in eval_samples()]
    with pytest.raises(ValueError, match="fewer than 2 choices"):
        build_task(load_spec("easyvqa"), no_choices)
    with pytest.raises(ValueError, match="selects no eval samples"):
        build_task(load_spec("digits"), eval_samples())
    (tmp_path / "bad.yaml").write_text("name: bad\nmetrics: [bleu]\n")
    with pytest.raises(ValueError, match="missing keys"):
        load_spec("bad", tmp_path)


def test_caption_task_uses_the_align_templates():
    samples = [({"id": "e1", "source": "emoji", "category": "caption", "task": "emoji", "answer": "joker",
                 "choices": ["joker", "bacon"], "messages": [{"role": "user", "content": "<image>\nname?"}]},
                [png("red")])]
    task = build_task(load_spec("caption"), samples)
    assert task.items[0].target == "A joker emoji."
    assert task.items[0].prompt == "<image>\nGive a short caption."


@pytest.mark.parametrize("task, pool", [("caption", "align"), ("description", "mid")])
def test_loss_task_targets_are_the_training_templates(task, pool):
    """A source's template changed without its loss task would silently score a text no stage trains on."""
    import numpy as np

    from llava_ov.data.sources import digits

    spec = load_spec(task)
    prompts = {"align": "Give a short caption.", "mid": "Describe the image in detail."}
    assert spec["prompt"] == f"<image>\n{prompts[pool]}"
    references = {spec["target"]["digits"].format(answer=d) for d in range(10)}
    texts = {c.messages[-1]["content"] for c in digits.generate({pool: 40}, np.random.default_rng(0))}
    assert len(texts) > 5 and texts <= references


def test_normalised_exact_match():
    task = build_task(load_spec("easyvqa"), eval_samples())
    assert task.normalise("  Red. ") == task.normalise("red") == "red"
    assert task.normalise("top-left") == "top left"


def test_cache_reuses_unchanged_pairs_and_never_serves_a_replaced_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, seed=0)
    tasks = [build_task(load_spec("easyvqa"), eval_samples())]
    cache = ResultCache(tmp_path / "cache")
    digest0, first = evaluate(folder, tasks, cache, batch_size=4, progress=False)
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list((tmp_path / "cache").glob(f"{digest0}-{tasks[0].digest}-*.json"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("an unchanged (checkpoint, task) pair must not load the model")

    monkeypatch.setattr(runner, "load_checkpoint", no_model)
    _, again = evaluate(folder, tasks, cache, batch_size=4, progress=False)
    assert again == first and cache.hits == 1
    monkeypatch.undo()

    write_checkpoint(folder, seed=1)  # a new checkpoint at the same path
    digest1, replaced = evaluate(folder, tasks, cache, batch_size=4, progress=False)
    assert digest1 != digest0 and cache.misses == 2
    assert replaced["easyvqa"]["checkpoint_digest"] == digest1
    assert [r["loss"] for r in replaced["easyvqa"]["samples"]] != [r["loss"] for r in first["easyvqa"]["samples"]]

    cache.path(f"{digest1}-{tasks[0].digest}-{runner.code_digest()}").write_text("{truncated")
    _, recomputed = evaluate(folder, tasks, cache, batch_size=4, progress=False)
    assert recomputed == replaced and cache.misses == 3


def test_results_are_deterministic_and_reconcile(ckpt_dir, tmp_path):
    tasks = [build_task(load_spec("easyvqa"), eval_samples())]
    _, a = evaluate(ckpt_dir, tasks, ResultCache(tmp_path / "a"), batch_size=4, progress=False)
    _, b = evaluate(ckpt_dir, tasks, ResultCache(tmp_path / "b"), batch_size=2, progress=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    summary, samples = a["easyvqa"]["summary"], a["easyvqa"]["samples"]
    assert summary["samples"] == len(samples) == 6
    assert summary["mc_accuracy"] == pytest.approx(sum(r["mc_correct"] for r in samples) / 6)
    assert all(r["mc_choice"] in COLOURS for r in samples)
    cats = category_metrics(a)
    assert cats == {"general_vqa": {"accuracy": summary["accuracy"], "mc_accuracy": summary["mc_accuracy"],
                                    "samples": 6}}


def test_worker_processes_give_the_results_of_one_process(ckpt_dir, tmp_path):
    tasks = [build_task(load_spec("easyvqa"), eval_samples()),
             build_task({**load_spec("easyvqa"), "name": "easyvqa_short"}, eval_samples(3))]
    assert [[t.name for t in g] for g in split_tasks(tasks, 2)] == [["easyvqa"], ["easyvqa_short"]]
    _, one = evaluate(ckpt_dir, tasks, ResultCache(tmp_path / "one"), batch_size=4, progress=False)
    _, two = evaluate(ckpt_dir, tasks, ResultCache(tmp_path / "two"), batch_size=4, progress=False, workers=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_split_tasks_balances_cost():
    sizes = {"big": 1000, "caption": 349, "a": 150, "b": 100, "c": 100, "d": 90}
    tasks = [Task(spec={"name": n}, items=tuple([None] * k)) for n, k in sizes.items()]
    groups = split_tasks(tasks, 2)
    assert [t.name for t in groups[0]] == ["big"]
    assert sorted(t.name for t in groups[1]) == ["a", "b", "c", "caption", "d"]
    assert split_tasks(tasks[:1], 4) == [tasks[:1]] and len(split_tasks(tasks, 1)) == 1


def test_blind_baseline_most_frequent_answer_per_pattern():
    train = [("easyvqa", [{"role": "user", "content": "<image>\nis there a red shape?"},
                          {"role": "assistant", "content": "no"},
                          {"role": "user", "content": "what color is the shape?"},
                          {"role": "assistant", "content": "blue"}]),
             ("easyvqa", [{"role": "user", "content": "<image>\nis there a blue shape?"},
                          {"role": "assistant", "content": "no"}]),
             ("easyvqa", [{"role": "user", "content": "<image>\nis there a green shape?"},
                          {"role": "assistant", "content": "yes"}]),
             ("easyvqa", [{"role": "user", "content": "<image>\nwhat color is the shape?"},
                          {"role": "assistant", "content": "red"},
                          {"role": "user", "content": "what color is the shape?"},
                          {"role": "assistant", "content": "red"}])]
    blind = BlindBaseline.fit(train)
    assert question_pattern("<image>\nIs there a RED shape?", blind.vocab["easyvqa"]) == "is there a <a> shape ?"
    assert blind.answer("easyvqa", "<image>\nis there a yellow shape?") == "no"
    assert blind.answer("easyvqa", "what color is the shape?") == "red"
    assert blind.answer("easyvqa", "how big is it?") == "no"  # unseen pattern: most frequent overall (tie → "no")
    assert BlindBaseline(**blind.to_json()).table == blind.table
    task = build_task(load_spec("easyvqa"), eval_samples(4))  # answers red, blue, green, yellow
    assert blind.accuracy(task) == 0.25


def test_report_builds_sections_from_whatever_is_built(tmp_path):
    from llava_ov.eval.report import build_report

    root, out = tmp_path / "proj", tmp_path / "out"
    (root / "metrics").mkdir(parents=True)
    out.mkdir()
    for stage, acc in (("stage0", 0.0), ("stage2", 0.9)):
        (root / "metrics" / f"eval_{stage}.json").write_text(json.dumps({
            "easyvqa": {"accuracy": acc, "mc_accuracy": 0.5 + acc / 2, "loss": 3 - acc, "blind_accuracy": 0.678,
                        "samples": 10},
            "category": {"general_vqa": {"accuracy": acc, "mc_accuracy": 0.5, "samples": 10}}, "seconds": 3.0}))
    live = root / "plots" / "train_stage1" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t0\t5.0\n0\t1\t4.0\n")
    expect = {"stage1": {"task": "caption", "metric": "loss", "better": "lower"},
              "stage2": {"task": "easyvqa", "metric": "accuracy", "better": "higher"}}
    packs = {"stage1": root / "artifacts" / "pack_stage1"}  # not built: its section is missing
    summary = build_report(root, out, ["stage0", "stage1", "stage2"], ["stage1"], packs,
                           ["eval_stage0", "eval_stage2"], expect)
    assert summary["eval_stages"] == ["stage0", "stage2"] and summary["train_stages"] == ["stage1"]
    assert summary["as_expected"] == {"stage2": True}  # stage1 is not evaluated: nothing to judge
    assert summary["missing"] == ["concept coverage", "pack fill"]
    md = (out / "report.md").read_text()
    assert "| easyvqa | accuracy | 0.000 | 0.900 | 0.678 |" in md
    assert "| stage2 | easyvqa | accuracy | 0.000 (stage0) | 0.900 | higher | yes |" in md
    assert "Not built yet: concept coverage, pack fill." in md
    assert {p.name for p in out.glob("*.png")} == {"eval_by_category.png", "eval_per_stage.png", "loss_curves.png",
                                                  "wall_time.png"}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    build_report(root, out, ["stage0", "stage1", "stage2"], ["stage1"], packs, ["eval_stage0", "eval_stage2"],
                 expect)
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}  # byte-identical: no timestamps
    worse = {"stage2": {"task": "easyvqa", "metric": "loss", "better": "higher"}}  # loss 3.0 -> 2.1 fell
    assert build_report(root, out, ["stage0", "stage2"], [], {}, [], worse)["as_expected"] == {"stage2": False}
    assert "| higher | NO |" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match=r"report.expect.stage2.better is 'up': use lower or higher"):
        build_report(root, out, ["stage0", "stage2"], [], {}, [], {"stage2": {**worse["stage2"], "better": "up"}})



# An edit to code that decides a score, in a module no hand-written list names: answer normalisation, and the
# system prompt in front of every prompt.
SCORE_EDITS = [("llava_ov/eval/tasks.py", '"lower": str.lower,', '"lower": str.upper,'),
               ("llava_ov/text/tokenizer.py", 'SYSTEM_PROMPT = "You are a helpful assistant."',
                'SYSTEM_PROMPT = "You are a careful assistant."')]
_DIGESTS_AFTER_EDITS = """
import sys
from pathlib import Path
from llava_ov.eval import runner
print(runner.code_digest())
for rel, old, new in zip(*[iter(sys.argv[1:])] * 3):
    path = Path(rel)
    assert old in path.read_text(), f"{rel} no longer holds {old!r}: update the test"
    path.write_text(path.read_text().replace(old, new))
    print(runner.code_digest())
"""


def test_cache_key_covers_every_module_the_evaluator_runs(tmp_path):
    """The evaluator's cache key is derived from the modules it imports, so an edit to any of them misses the
    cache (the stage reruns because dvc.yaml lists the module; the cache must not hand it the old scores)."""
    import shutil
    import subprocess
    import sys

    from tests.project import REPO, env

    shutil.copytree(REPO / "llava_ov", tmp_path / "llava_ov", ignore=shutil.ignore_patterns("__pycache__"))
    args = [x for edit in SCORE_EDITS for x in edit]
    out = subprocess.run([sys.executable, "-c", _DIGESTS_AFTER_EDITS, *args], cwd=tmp_path, check=True,
                         env=env() | {"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True).stdout.split()
    assert len(out) == 3 and len(set(out)) == 3, f"code digests before and after each edit: {out}"


def test_task_specs_are_read_as_yaml_1_2(tmp_path):
    """Specs are read with the loader DVC uses for params (YAML 1.2): `no` is a string, not `false`."""
    spec = load_spec("easyvqa")
    text = (SPEC_DIR / "easyvqa.yaml").read_text().replace("select: {task: easyvqa}", "select: {task: [no]}")
    (tmp_path / "easyvqa.yaml").write_text(text)
    assert load_spec("easyvqa", tmp_path) == dict(spec, select={"task": ["no"]})

def test_report_puts_lmms_scores_beside_the_published_table(tmp_path):
    from llava_ov.eval.report import build_report

    root, out = tmp_path / "proj", tmp_path / "out"
    (root / "metrics").mkdir(parents=True)
    out.mkdir()
    early = {"mmstar": {"loss": 2.5, "mc_accuracy": 0.3, "samples": 1500, "mc_samples": 1500, "failed": 0}}
    late = {"mmstar": {"loss": 0.4, "mc_accuracy": 0.7, "average": 0.702, "samples": 1500, "mc_samples": 1500,
                       "failed": 0},
            "chartqa": {"loss": 0.9, "relaxed_overall": 0.8604, "samples": 2500, "failed": 0},
            "mmmu_val": {"loss": 1.1, "mmmu_acc": 0.5301, "samples": 899, "failed": 1}}
    for stage, lmms in (("stage0", early), ("stage2", late)):
        (root / "metrics" / f"eval_{stage}.json").write_text(json.dumps(
            {"lmms": lmms, "lmms_generation": stage == "stage2", "seconds": 1.0}))
    summary = build_report(root, out, ["stage0", "stage2"], [], {}, [], {},
                           {"model": "ov15_4b", "stage": "stage2", "tolerance": 2.0})
    assert summary["published"]["mmstar"] == {"value": 70.2, "published": 64.9, "delta": 5.3,
                                              "within_tolerance": False}
    assert summary["published"]["chartqa"]["within_tolerance"] is True  # 86.0 vs 87.1
    assert summary["published"]["docvqa_val"] == {"value": None, "published": 94.4, "delta": None,
                                                  "within_tolerance": None}
    md = (out / "report.md").read_text()
    assert ("| benchmark | lmms-eval task | this build (stage2) | OV-1.5-8B | Qwen2.5-VL-7B | OV-1.5-4B | "
            "Qwen2.5-VL-3B | Δ vs OV-1.5-4B | within ±2 |") in md
    assert "| MMStar | mmstar:average | 70.2 | 67.7 | 62.5 | 64.9 | 55.9 | +5.3 | DIFFERS |" in md
    assert "| MMMU val | mmmu_val:mmmu_acc | 53.0 (1 items failed) | 55.4 | 51.3 | 52.7 | 46.4 | +0.3 | yes |" in md
    assert "| DocVQA | docvqa_val:anls | not run | 95.0 | 94.9 | 94.4 | 92.7 |  |  |" in md
    assert "| mmstar | loss | 2.500 | 0.400 |" in md and "| mmstar | average | — | 0.702 |" in md
    assert "eval.lmms.generation_stages (stage2)" in md and "not instruction-tuned" in md
    assert "arXiv 2509.23661" in md and "DocVQA: published on the test split" in md
    # The default profile's report has no lmms-eval section at all.
    (root / "metrics" / "eval_stage2.json").write_text(json.dumps({"easyvqa": {"accuracy": 0.9, "samples": 10}}))
    (root / "metrics" / "eval_stage0.json").unlink()
    assert "published" not in build_report(root, out, ["stage2"], [], {}, [], {}, {"model": "", "stage": "stage2",
                                                                                   "tolerance": 2.0})
    assert "Published benchmarks" not in (out / "report.md").read_text()


def test_a_leading_system_turn_is_not_the_question():
    """Ingest keeps a sample's system turn; the eval prompt is its first user turn and the blind baseline pairs
    user with assistant turns after it."""
    from llava_ov.eval.blind import BlindBaseline
    from llava_ov.eval.tasks import build_task

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "<image>\nWhat shape?"},
                {"role": "assistant", "content": "circle"}]
    spec = {"name": "t", "select": {"source": "s"}, "prompt": "sample", "target": "answer", "metrics": ["accuracy"]}
    sample = {"id": "a", "source": "s", "category": "c", "messages": messages, "answer": "circle"}
    task = build_task(spec, [(sample, [b"img"])])
    assert task.items[0].prompt == "<image>\nWhat shape?"
    baseline = BlindBaseline.fit([("s", messages)])
    assert baseline.fallback["s"] == "circle"
