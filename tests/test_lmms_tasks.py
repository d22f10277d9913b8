"""lmms-eval benchmarks in the eval stage: local data, stage-appropriate parts, cache keys, bad input, replicas."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from llava_ov.eval import lmms_runner
from llava_ov.eval.cache import ResultCache
from llava_ov.eval.checkpoint import load_checkpoint
from llava_ov.eval.lmms_adapter import MODEL_ID, LlavaOV15Local, build_prompt
from llava_ov.eval.lmms_data import MissingDataError
from llava_ov.eval.lmms_likelihood import letter_choices, likelihood_items
from llava_ov.eval.lmms_runner import evaluate_lmms, run_generation, task_metrics
from llava_ov.eval.lmms_tasks import resolve
from llava_ov.eval.parallel import open_replica
from llava_ov.eval.scoring import Scorer
from llava_ov.model import LlavaOV15ForConditionalGeneration
from tests.lmms_fixture import TASKS, render, write_benchmark
from tests.test_eval import write_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """A private datasets cache, the folder lmms-eval reads (so nothing lands in the user's cache)."""
    from lmms_eval.api.task import _resolve_hf_datasets_cache_dir

    old = os.environ.get("LMMS_EVAL_DATASETS_CACHE")
    os.environ["LMMS_EVAL_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets"))
    _resolve_hf_datasets_cache_dir.cache_clear()
    yield
    os.environ.pop("LMMS_EVAL_DATASETS_CACHE") if old is None else os.environ.update(LMMS_EVAL_DATASETS_CACHE=old)
    _resolve_hf_datasets_cache_dir.cache_clear()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return write_benchmark(tmp_path_factory.mktemp("bench"), data_ref="../data/test.parquet")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lmms_ckpt")
    write_checkpoint(folder, seed=0)
    return folder


def lmms_cfg(tasks_dir: Path, **changes) -> dict:
    """``eval.lmms`` params as params.yaml has them, with the local benchmark's tasks."""
    return {"tasks": list(TASKS), "include_path": [str(tasks_dir)], "data_dir": "data/lmms",
            "generation_stages": ["stage2"], "max_pixels": 3240000, "min_pixels": 0, "max_new_tokens": 128,
            "dtype": "float32", "device": "cpu", "data_parallel": 1, "batch_size": 8, "threads": 1, **changes}


@pytest.fixture(scope="module")
def stage2(bench, ckpt_dir, tmp_path_factory) -> dict:
    """The module's checkpoint evaluated at Stage-2 on the three local tasks, one process, batch 8."""
    return evaluate_lmms("stage2", ckpt_dir, lmms_cfg(bench), ResultCache(tmp_path_factory.mktemp("cache")))[1]


def no_model(*args, **kwargs):
    raise AssertionError("cached results must not load the model")


def canonical(results: dict) -> str:
    return json.dumps(results, sort_keys=True)


def _without_losses(results: dict) -> str:
    return canonical({t: {**r, "likelihood": {**r["likelihood"], "summary": {}, "samples": [
        {k: v for k, v in s.items() if k != "loss"} for s in r["likelihood"]["samples"]]}} for t, r in results.items()})


def assert_same_answers(a: dict, b: dict) -> None:
    """Identical generated answers, scores and choices; per-document losses equal up to float32 summation order
    (a padded batch adds the same terms in another order: the 6th decimal may differ)."""
    assert _without_losses(a) == _without_losses(b)
    for task in a:
        losses = [[s["loss"] for s in r[task]["likelihood"]["samples"]] for r in (a, b)]
        assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_letter_choices_are_the_options_a_prompt_lists():
    assert letter_choices("What?\nA. red\nB. blue\nC. green\nAnswer with the letter.", "B") == ("A", "B", "C")
    assert letter_choices("Which?\nOptions: A: red, B: blue, C: x, D: y", "D") == tuple("ABCD")  # MMStar
    assert letter_choices("Which?\n(A) red\n(B) blue", "A") == ("A", "B")  # MMMU
    assert letter_choices("In the U.S. who?\nA. x\nB. y", "A") == ("A", "B")  # a stray capital is no option
    assert letter_choices("A. red\nB. blue", "red") == ()  # not a letter answer
    assert letter_choices("A. red\nC. blue", "C") == ()  # the options must run from A
    assert letter_choices("How many? Answer with a number.", "A") == ()


def test_parts_follow_the_stage_and_are_cached(bench, ckpt_dir, tmp_path, monkeypatch):
    cache = ResultCache(tmp_path / "cache")
    _, early = evaluate_lmms("stage0", ckpt_dir, lmms_cfg(bench), cache)
    assert (cache.hits, cache.misses) == (0, 3)
    assert all(r["generation"] is None for r in early.values())  # no generation before Stage-2
    mc = early["shapes_mc"]["likelihood"]["summary"]
    assert mc["samples"] == mc["mc_samples"] == 20 and 0 <= mc["mc_accuracy"] <= 1 and mc["loss"] > 0
    assert "mc_accuracy" not in early["shapes_short"]["likelihood"]["summary"]  # a short answer: loss only

    _, late = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(bench), cache)
    assert (cache.hits, cache.misses) == (3, 5)  # likelihood reused; generation for the two generate_until tasks
    assert late["shapes_choice"]["generation"] is None  # lmms-eval multiple_choice: scored by likelihood only
    assert {r["doc_id"] for r in late["shapes_mc"]["generation"]["samples"]} == set(range(20))
    assert task_metrics(late["shapes_mc"])["exact_match"] in [i / 20 for i in range(21)]
    assert late["shapes_mc"]["likelihood"] == early["shapes_mc"]["likelihood"]

    monkeypatch.setattr(lmms_runner, "open_scorer", no_model)
    _, again = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(bench), cache)
    assert canonical(again) == canonical(late) and cache.hits == 8
    monkeypatch.undo()

    # Greedy answers and likelihoods do not depend on the batch (left padding for generation): batch 1 agrees.
    _, one = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(bench, batch_size=1), ResultCache(tmp_path / "b1"))
    assert_same_answers(one, late)


def test_cache_key_follows_task_config_data_and_settings(ckpt_dir, tmp_path):
    tasks = write_benchmark(tmp_path / "b", data_ref="../data/test.parquet", n=6)
    cache = ResultCache(tmp_path / "cache")
    cfg = lmms_cfg(tasks, tasks=["shapes_short"])
    evaluate_lmms("stage0", ckpt_dir, cfg, cache)
    evaluate_lmms("stage0", ckpt_dir, {**cfg, "batch_size": 2, "threads": 2}, cache)  # execution only: a hit
    assert (cache.hits, cache.misses) == (1, 1)
    evaluate_lmms("stage0", ckpt_dir, {**cfg, "max_pixels": 640 * 480}, cache)  # settings
    yaml_path = tasks / "shapes_short.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("What shape is this?", "Which shape is this?"))
    evaluate_lmms("stage0", ckpt_dir, cfg, cache)  # task config
    write_benchmark(tmp_path / "b", data_ref="../data/test.parquet", n=5)  # data (the YAMLs are rewritten too)
    yaml_path.write_text(yaml_path.read_text().replace("What shape is this?", "Which shape is this?"))
    _, last = evaluate_lmms("stage0", ckpt_dir, cfg, cache)
    assert (cache.hits, cache.misses) == (1, 4) and last["shapes_short"]["likelihood"]["summary"]["samples"] == 5


def test_multiple_choice_picks_the_most_likely_choice(bench, ckpt_dir):
    """Each document's choice is the argmax of the choices' log-likelihoods, scored one by one here."""
    scorer = Scorer(load_checkpoint(ckpt_dir), batch_size=4, progress=False)
    task, _ = resolve("shapes_choice", "data/lmms", [bench]).build()
    items = likelihood_items(task)
    result = lmms_runner.run_likelihood(scorer, task)
    for item, rec in zip(items, result["samples"]):
        logprobs = [scorer.loglikelihood([(item.prompt, [c])], close_turn=False)[0][0].logprob for c in item.choices]
        assert rec["mc_choice"] == item.choices[max(range(4), key=lambda j: (logprobs[j], -j))]
        assert rec["reference"] == task.doc_to_target(task.eval_docs[rec["doc_id"]])
    assert item.choices == ("red", "blue", "green", "yellow") and item.prompt.text.startswith("<image>\n")


def test_published_task_reads_a_parquet_folder(ckpt_dir, tmp_path):
    """lmms-eval's own MMStar task, unchanged, on a local copy in the hub's schema (4 made-up items)."""
    rows = [{"index": i, "question": f"Which colour is the shape?\nOptions: A: red, B: blue, C: green, D: {c}",
             "image": {"bytes": render("circle", c, 56), "path": None}, "answer": "ABCD"[i], "category":
             "coarse perception", "l2_category": "image scene and topic", "meta_info": "{}"}
            for i, c in enumerate(["red", "blue", "green", "yellow"])]
    features = datasets.Features({"index": datasets.Value("int64"), "question": datasets.Value("string"),
                                  "image": datasets.Image(), "answer": datasets.Value("string"),
                                  "category": datasets.Value("string"), "l2_category": datasets.Value("string"),
                                  "meta_info": datasets.Value("string")})
    data_dir = tmp_path / "lmms"
    (data_dir / "mmstar").mkdir(parents=True)
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features).to_parquet(
        data_dir / "mmstar" / "val-00000-of-00001.parquet")
    lt = resolve("mmstar", data_dir)
    assert lt.data.source == "data_dir" and lt.yaml.name == "mmstar.yaml" and lt.output_type == "generate_until"
    task, failures = lt.build()
    assert failures == {} and len(task.eval_docs) == 4
    items = likelihood_items(task)
    assert [it.choices for it in items] == [tuple("ABCD")] * 4 and [it.reference for it in items] == list("ABCD")
    assert items[0].prompt.text.endswith("Answer with the option's letter from the given choices directly")
    result = run_generation(open_replica(ckpt_dir, "cpu"), task, 16)
    assert 0 <= result["summary"]["average"] <= 1 and len(result["samples"]) == 4


def test_a_missing_dataset_names_the_task_the_path_and_the_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline is forced anyway: no hub retries
    start = time.perf_counter()
    with pytest.raises(MissingDataError) as err:
        resolve("mmstar", tmp_path / "lmms")
    message = str(err.value)
    assert "task mmstar" in message and str(tmp_path / "lmms" / "mmstar") in message
    assert "to_parquet" in message and "datasets cache" in message and "Lin-Chen/MMStar" in message
    assert time.perf_counter() - start < 10
    tasks = write_benchmark(tmp_path / "b", data_ref="../data/missing.parquet", n=2)
    with pytest.raises(MissingDataError, match=r"task shapes_mc: .*missing\.parquet.* do not exist"):
        resolve("shapes_mc", tmp_path / "lmms", [tasks])
    with pytest.raises(ValueError, match="no lmms-eval task 'no_such_task'"):
        resolve("no_such_task", tmp_path / "lmms", [tasks])


def test_images_that_do_not_decode_are_counted_failures(ckpt_dir, tmp_path):
    tasks = write_benchmark(tmp_path / "b", data_ref="../data/test.parquet", n=6, broken=(1, 4))
    _, res = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(tasks, tasks=["shapes_short"]), ResultCache(tmp_path / "c"))
    metrics = task_metrics(res["shapes_short"])
    assert metrics["failed"] == 2 and metrics["samples"] == 4 and len(res["shapes_short"]["generation"]["samples"]) == 4
    assert [f["row"] for f in res["shapes_short"]["failures"]] == [1, 4]
    assert all(f["reason"].startswith("UnidentifiedImageError") and "0x" not in f["reason"]
               for f in res["shapes_short"]["failures"])
    tasks = write_benchmark(tmp_path / "all", data_ref="../data/test.parquet", n=2, broken=(0, 1))
    _, res = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(tasks, tasks=["shapes_short"]), ResultCache(tmp_path / "d"))
    assert task_metrics(res["shapes_short"]) == {"samples": 0, "failed": 2}


def test_a_folder_with_remote_code_loads_with_the_projects_class_and_never_runs_it(ckpt_dir, tmp_path):
    """A released folder names its own code in ``auto_map``; that code would raise if it ever ran."""
    folder = tmp_path / "released"
    write_checkpoint(folder, seed=0)  # the same weights as ckpt_dir
    maps = {"config.json": {"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilModel"},
            "tokenizer_config.json": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}
    for name, auto_map in maps.items():
        meta = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**meta, "auto_map": auto_map}))
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{module}.py").write_text("raise RuntimeError('code from the checkpoint folder was executed')\n")
    lm = LlavaOV15Local(pretrained=str(folder), batch_size=2)
    assert type(lm.scorer.ckpt.model) is LlavaOV15ForConditionalGeneration
    assert not any("evil" in name for name in sys.modules)
    prompt = build_prompt("What shape is this?", [Image.open(io.BytesIO(render("square", "red", 56)))])
    clean = LlavaOV15Local(pretrained=str(ckpt_dir), batch_size=2)
    assert lm.scorer.generate([prompt], 4) == clean.scorer.generate([prompt], 4)


def test_two_replica_processes_give_the_answers_of_one_in_document_order(bench, ckpt_dir, stage2, tmp_path):
    _, two = evaluate_lmms("stage2", ckpt_dir, lmms_cfg(bench, data_parallel=2), ResultCache(tmp_path / "two"))
    assert_same_answers(two, stage2)
    assert [r["doc_id"] for r in two["shapes_mc"]["likelihood"]["samples"]] == list(range(20))


def test_cli_runs_the_local_benchmark_and_agrees_with_the_stage(bench, ckpt_dir, stage2, tmp_path):
    """The real `lmms-eval eval` CLI, offline, on the same tasks: the same scores and answers as the stage."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("LMMS_EVAL_DATASETS_CACHE", None)
    out = tmp_path / "out"
    proc = subprocess.run([str(Path(sys.executable).with_name("lmms-eval")), "eval", "--model", MODEL_ID,
                           "--model_args", f"pretrained={ckpt_dir},max_pixels=3240000", "--tasks",
                           "shapes_mc,shapes_short", "--include_path", str(bench), "--output_path", str(out),
                           "--log_samples", "--batch_size", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = json.loads(next(out.rglob("*_results.json")).read_text())
    for task in ("shapes_mc", "shapes_short"):
        assert cli["results"][task]["exact_match,none"] == stage2[task]["generation"]["summary"]["exact_match"]
        logged = [json.loads(line) for line in next(out.rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()]
        assert [s["filtered_resps"] for s in sorted(logged, key=lambda s: s["doc_id"])] == \
               [s["filtered_resps"][0] for s in stage2[task]["generation"]["samples"]]  # the CLI unwraps one answer
