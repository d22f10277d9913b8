"""lmms-eval benchmarks of one checkpoint: stage-appropriate parts, each cached by content digests.

Each task has up to two parts, computed and cached on their own:

- ``likelihood``, for every checkpoint: reference loss and multiple choice by log-likelihood
  (:mod:`llava_ov.eval.lmms_likelihood`). lmms-eval ``multiple_choice`` tasks are scored only here.
- ``generation``, for checkpoints of ``generation_stages`` (Stage-2) and ``generate_until`` tasks: lmms-eval's own
  evaluator runs the task through the project's adapter, greedy, and scores it with the task's metrics: the
  numbers the published table reports. Earlier checkpoints are not instruction-tuned and score about 0 on them
  (README, "Evaluation"), so they are not run there.

A part's cache key joins ``lmms``, the checkpoint digest (folder bytes), the task's config digest, its dataset
digest, the evaluator code digest (the offline evaluator's sources plus the adapter's) and the settings digest
(the part, resize bounds, dtype, default answer length; decoding is always greedy). Batch size and the number of
replicas are left out: they do not change an answer (tested on CPU). An unchanged pair is read back without
loading the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import xxhash

from llava_ov.artifacts import digest_file, digest_json
from llava_ov.eval import runner
from llava_ov.eval.cache import ResultCache, cache_key
from llava_ov.eval.checkpoint import checkpoint_digest
from llava_ov.eval.lmms_adapter import LlavaOV15Local
from llava_ov.eval.lmms_likelihood import likelihood_items, score_likelihood
from llava_ov.eval.lmms_tasks import LmmsTask, resolve
from llava_ov.eval.parallel import ParallelScorer, open_scorer

_PKG = Path(__file__).resolve().parents[1]
# Beyond runner.EVALUATOR_SOURCES (scoring, model, template, image processing): what turns an lmms-eval document
# into a scored request here.
ADAPTER_SOURCES = ("eval/lmms_adapter.py", "eval/lmms_data.py", "eval/lmms_likelihood.py", "eval/lmms_tasks.py",
                   "eval/lmms_runner.py", "eval/parallel.py")
SETTINGS = ("max_pixels", "min_pixels", "dtype", "max_new_tokens")


def code_digest() -> str:
    """The offline evaluator's code digest extended with the adapter's sources."""
    h = xxhash.xxh3_128(runner.code_digest().encode())
    for rel in ADAPTER_SOURCES:
        h.update(digest_file(_PKG / rel).encode())
    return h.hexdigest()


def parts(task: LmmsTask, generation: bool) -> list[str]:
    """The parts of ``task`` a checkpoint gets: generation only on generation stages, for generation tasks."""
    return ["likelihood"] + (["generation"] if generation and task.output_type == "generate_until" else [])


def _metric_key(key: str) -> str:
    """lmms-eval's ``metric,filter`` result key without the default filter (``exact_match,none``: ``exact_match``)."""
    return key.removesuffix(",none")


def run_generation(scorer, task, max_new_tokens: int) -> dict:
    """lmms-eval's evaluator on one task object, through the adapter over ``scorer``: numeric metrics and, per
    document, the target, the (filtered) answers and the task's per-document scores."""
    # Imported here: the evaluator takes ~10 s to import, which cached runs and pre-Stage-2 checkpoints skip.
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    name = task.config.task
    out = simple_evaluate(model=LlavaOV15Local.around(scorer, max_new_tokens), tasks=[task],
                          task_manager=TaskManager(include_defaults=False), bootstrap_iters=0, log_samples=True,
                          distributed_executor_backend="torchrun", verbosity="WARNING")
    metrics = {_metric_key(k): float(v) for k, v in out["results"][name].items()
               if k != "alias" and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    keep = {"doc_id", "target", "filtered_resps", *(m["metric"] for m in task.config.metric_list or [])}
    samples = [{k: v for k, v in s.items() if k in keep} for s in out["samples"][name]]
    return {"summary": metrics, "samples": json.loads(json.dumps(samples, default=str))}


def run_likelihood(scorer, task) -> dict:
    return score_likelihood(scorer, likelihood_items(task))


def _settings_digest(cfg: dict, part: str) -> str:
    return digest_json({"part": part, "decoding": "greedy", **{k: cfg[k] for k in SETTINGS}})


def evaluate_lmms(stage: str, checkpoint: Path | str, cfg: dict, cache: ResultCache) -> tuple[str, dict[str, dict]]:
    """(checkpoint digest, task → result) for the lmms-eval tasks of ``cfg`` (params ``eval.lmms``).

    A result holds the task's digests, its ``likelihood`` part, its ``generation`` part (None before
    ``generation_stages``) and ``failures`` (items whose images do not decode: counted, left out of the scores)."""
    generation = stage in cfg["generation_stages"]
    tasks = [resolve(name, cfg["data_dir"], cfg["include_path"]) for name in cfg["tasks"]]
    ckpt_digest, code = checkpoint_digest(checkpoint), code_digest()
    digests = {t.name: {"config": t.config_digest, "data": t.data.digest(), "data_source": t.data.source}
               for t in tasks}
    keys = {(t.name, part): cache_key("lmms", ckpt_digest, digests[t.name]["config"], digests[t.name]["data"], code,
                                      _settings_digest(cfg, part)) for t in tasks for part in parts(t, generation)}
    done = {pair: cache.get(key) for pair, key in keys.items()}
    todo = [t for t in tasks if any(done[(t.name, p)] is None for p in parts(t, generation))]
    if todo:
        scorer = open_scorer(checkpoint, cfg["device"], cfg["data_parallel"], dtype=cfg["dtype"],
                             batch_size=cfg["batch_size"], max_pixels=cfg["max_pixels"],
                             min_pixels=cfg["min_pixels"], threads=cfg["threads"])
        try:
            for t in todo:
                task, failures = t.build()
                for part in parts(t, generation):
                    if done[(t.name, part)] is not None:
                        continue
                    if task is None:  # every item failed to decode
                        result = {"summary": {"samples": 0}, "samples": []}
                    elif part == "likelihood":
                        result = run_likelihood(scorer, task)
                    else:
                        result = run_generation(scorer, task, cfg["max_new_tokens"])
                    result.update(checkpoint_digest=ckpt_digest,
                                  failures=[{"row": i, "reason": r} for i, r in sorted(failures.items())])
                    cache.put(keys[(t.name, part)], result)
                    done[(t.name, part)] = result
        finally:
            if isinstance(scorer, ParallelScorer):
                scorer.close()
    return ckpt_digest, {t.name: {"output_type": t.output_type, "digests": digests[t.name],
                                  "likelihood": done[(t.name, "likelihood")],
                                  "generation": done.get((t.name, "generation")),
                                  "failures": done[(t.name, "likelihood")]["failures"]} for t in tasks}


def task_metrics(result: dict) -> dict:
    """The metrics file entry of one task: likelihood metrics, generation metrics (when run), failed items."""
    generated = result["generation"]["summary"] if result["generation"] else {}
    return {**result["likelihood"]["summary"], **generated, "failed": len(result["failures"])}
