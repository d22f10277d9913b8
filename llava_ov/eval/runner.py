"""Evaluate one checkpoint folder on a list of tasks, with results cached by content digests.

Per task, stage-appropriate metrics (the spec chooses which):

- ``loss``: mean negative log-likelihood per token of the reference answer (or caption) and its closing
  ``<|im_end|>`` given the prompt: meaningful from stage0 on, it falls as alignment and mid-training work.
- ``mc_accuracy``: log-likelihood multiple choice over the sample's ``choices`` (argmax of summed or per-token
  mean log-prob): needs no instruction following, so it moves before Stage-2.
- ``accuracy``: greedy generation scored by normalised exact match: near 0 before instruction tuning (the model
  does not yet answer in one word and stop), the headline number after Stage-2.

Per category (the ``category`` of each eval sample) the same accuracies are pooled over all tasks.
"""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

from llava_ov.code_digest import code_digest as modules_digest
from llava_ov.eval.cache import ResultCache, cache_key
from llava_ov.eval.checkpoint import checkpoint_digest, load_checkpoint
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.eval.tasks import Task


def code_digest() -> str:
    """The evaluator's code, the third part of a result's cache key: every project module scoring runs (found by
    following this module's imports, so the answer normalisers of ``eval/tasks.py`` and the system prompt of
    ``text/tokenizer.py`` count without anyone listing them) and the numeric libraries' versions."""
    return modules_digest(__name__)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


def run_task(scorer: Scorer, task: Task) -> dict:
    """Score one task: per-sample records and the task summary (metrics of the spec, sample count)."""
    metrics = task.spec["metrics"]
    prompts = [Prompt(it.prompt, it.images) for it in task.items]
    records = [{"id": it.sample_id, "source": it.source, "category": it.category, "target": it.target}
               for it in task.items]
    if "loss" in metrics or "mc_accuracy" in metrics:
        # Choices in the sample's own order (ties go to the earlier one, never to the reference by position).
        conts = [(list(it.choices) + ([it.target] if it.target not in it.choices else []))
                 if "mc_accuracy" in metrics else [it.target] for it in task.items]
        per_token = task.spec["mc_score"] == "mean"
        for rec, it, cs, scores in zip(records, task.items, conts,
                                       scorer.loglikelihood(list(zip(prompts, conts)))):
            ref = scores[cs.index(it.target)]
            rec["loss"] = round(-ref.logprob / ref.tokens, 6)
            if "mc_accuracy" in metrics:
                values = [s.logprob / s.tokens if per_token else s.logprob for s in scores]
                best = max(range(len(cs)), key=lambda j: (values[j], -j))
                rec["mc_choice"] = cs[best]
                rec["mc_correct"] = cs[best] == it.target
    if "accuracy" in metrics:
        # An answer longer than the longest reference (plus slack for punctuation) cannot match: stop there.
        longest = max(len(scorer.encode_continuation(it.target, close_turn=False)) for it in task.items)
        limit = min(task.spec["max_new_tokens"], longest + 2)
        for rec, it, pred in zip(records, task.items, scorer.generate(prompts, limit)):
            rec["prediction"] = pred
            rec["correct"] = task.normalise(pred) == task.normalise(it.target)
    summary = {"samples": len(records)}
    if "loss" in metrics:
        summary["loss"] = _mean([r["loss"] for r in records])
    if "mc_accuracy" in metrics:
        summary["mc_accuracy"] = _mean([float(r["mc_correct"]) for r in records])
    if "accuracy" in metrics:
        summary["accuracy"] = _mean([float(r["correct"]) for r in records])
    return {"task": task.name, "task_digest": task.digest, "summary": summary, "samples": records}


def task_cost(task: Task) -> float:
    """Relative cost of scoring ``task``: a fixed part (model warm-up, new images) plus one per 100 items."""
    return 1.0 + len(task.items) / 100


def split_tasks(tasks: list[Task], workers: int) -> list[list[Task]]:
    """Tasks in ``workers`` groups of similar total :func:`task_cost` (longest first onto the lightest group)."""
    groups: list[list[Task]] = [[] for _ in range(max(1, min(workers, len(tasks))))]
    loads = [0.0] * len(groups)
    for task in sorted(tasks, key=lambda t: (-task_cost(t), t.name)):
        lightest = loads.index(min(loads))
        groups[lightest].append(task)
        loads[lightest] += task_cost(task)
    return groups


def run_tasks(checkpoint: Path | str, tasks: list[Task], batch_size: int, threads: int,
              progress: bool = False) -> list[dict]:
    """Load the checkpoint and score ``tasks`` in this process (also the body of a worker process)."""
    torch.set_num_threads(threads)
    scorer = Scorer(load_checkpoint(checkpoint), batch_size=batch_size, progress=progress)
    return [run_task(scorer, task) for task in tasks]


def evaluate(checkpoint: Path | str, tasks: list[Task], cache: ResultCache, batch_size: int = 32,
             progress: bool = True, workers: int = 1, threads: int = 1) -> tuple[str, dict[str, dict]]:
    """(checkpoint digest, task name → result), reading cached results and computing only the missing ones.

    The model is loaded only when at least one (checkpoint, task) pair is not cached. Missing tasks are split
    over ``workers`` processes of ``threads`` torch threads each (this process is one of them): on a shared
    2-core machine two single-threaded processes degrade gracefully when another job takes a core, where one
    process with two OpenMP threads stalls at every barrier (README, "Evaluation"). Each task is scored whole by
    one process.
    """
    ckpt_digest, code = checkpoint_digest(checkpoint), code_digest()
    results: dict[str, dict] = {}
    todo = []
    for task in tasks:
        cached = cache.get(cache_key(ckpt_digest, task.digest, code))
        if cached is None:
            todo.append(task)
        else:
            results[task.name] = cached
    if todo:
        own, *others = split_tasks(todo, workers)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(others), spawn) if others else nullcontext() as pool:
            futures = [(group, pool.submit(run_tasks, checkpoint, group, batch_size, threads)) for group in others]
            done = [(own, run_tasks(checkpoint, own, batch_size, threads, progress))]
            done += [(group, future.result()) for group, future in futures]
        for group, group_results in done:
            for task, result in zip(group, group_results):
                result["checkpoint_digest"] = ckpt_digest
                cache.put(cache_key(ckpt_digest, task.digest, code), result)
                results[task.name] = result
    return ckpt_digest, {t.name: results[t.name] for t in tasks}


def category_metrics(results: dict[str, dict]) -> dict[str, dict]:
    """Accuracies pooled per sample category over every task that reports them."""
    pooled: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results.values():
        for rec in result["samples"]:
            for metric, field in (("accuracy", "correct"), ("mc_accuracy", "mc_correct")):
                if field in rec:
                    pooled[rec["category"]][metric].append(float(rec[field]))
    return {cat: {**{m: _mean(v) for m, v in sorted(ms.items())},
                  "samples": max(len(v) for v in ms.values())} for cat, ms in sorted(pooled.items())}
