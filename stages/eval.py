"""DVC stage `eval@<stage>`: evaluate one checkpoint on the offline tasks and/or lmms-eval benchmarks (cached).

Usage: ``python -m stages.eval <stage> --in checkpoint=<HF folder> [--in ingest=...] [--out ...] [--metrics ...]``. ``eval.tasks`` names the offline tasks (the default
profile's evaluation, with the blind baseline); ``eval.lmms.tasks`` names lmms-eval benchmarks (the 4b/8b profiles'),
stage-appropriate per ``eval.lmms.generation_stages``. Writes ``artifacts/eval_<stage>`` (the pinned task lists,
per-sample predictions, ``lmms/<task>.json``) and ``metrics/eval_<stage>.json`` (``<task>.<metric>``,
``category.<name>.<metric>``, ``lmms.<task>.<metric>``).
"""

from llava_ov.artifacts import write_json, write_jsonl
from llava_ov.data.reader import iter_samples
from llava_ov.eval.blind import cached_blind_baseline
from llava_ov.eval.cache import ResultCache
from llava_ov.eval.runner import category_metrics, evaluate
from llava_ov.eval.tasks import build_task, load_spec
from llava_ov.stage import EVAL_STAGES, stage_run


def main() -> None:
    with stage_run("eval_{variant}", variants=EVAL_STAGES) as run:
        stage, cfg = run.variant, run.params["eval"]
        lmms_cfg = cfg["lmms"]
        if not cfg["tasks"] and not lmms_cfg["tasks"]:
            raise SystemExit("eval: eval.tasks and eval.lmms.tasks are both empty in params.yaml: nothing to evaluate")
        ingest, ckpt = run.open("ingest"), run.open("checkpoint", "hf_model")
        cache = ResultCache(cfg["cache_dir"])
        metrics: dict = {}
        tasks, results, lmms_results = [], {}, {}
        if cfg["tasks"]:
            eval_samples = [(sample, images) for _, sample, images in iter_samples(ingest, ("eval",))]
            tasks = [build_task(load_spec(name), eval_samples, cfg["max_items"]) for name in cfg["tasks"]]
            blind = cached_blind_baseline(ingest, tuple(cfg["blind_pools"]), cache)
            ckpt_digest, results = evaluate(ckpt.path, tasks, cache, batch_size=cfg["batch_size"],
                                            workers=cfg["workers"], threads=cfg["threads"])
            for task in tasks:
                metrics[task.name] = dict(results[task.name]["summary"])
                if task.spec["blind_baseline"]:
                    metrics[task.name]["blind_accuracy"] = blind.accuracy(task)
            metrics["category"] = category_metrics(results)
        if lmms_cfg["tasks"]:
            # Imported here: lmms-eval and datasets take ~15 s to import, which only a profile with benchmarks pays.
            from llava_ov.eval.lmms_runner import evaluate_lmms, task_metrics

            ckpt_digest, lmms_results = evaluate_lmms(stage, ckpt.path, lmms_cfg, cache)
            metrics["lmms"] = {name: task_metrics(result) for name, result in lmms_results.items()}
            metrics["lmms_generation"] = stage in lmms_cfg["generation_stages"]
        with run.writer(params={"eval": cfg}, inputs={"ingest": ingest, "checkpoint": ckpt}) as w:
            if tasks:
                write_json(w.dir / "tasks.json", {t.name: {"digest": t.digest, "items": len(t.items), "spec": t.spec}
                                                  for t in tasks})
                (w.dir / "predictions").mkdir()
                for task in tasks:
                    write_jsonl(w.dir / "predictions" / f"{task.name}.jsonl", results[task.name]["samples"])
            for name, result in lmms_results.items():
                write_json(w.dir / "lmms" / f"{name}.json", result)
            write_json(w.dir / "metrics.json", metrics)
            w.stats.update(checkpoint_digest=ckpt_digest, tasks=len(tasks) + len(lmms_results),
                           items=sum(len(t.items) for t in tasks) + sum(m["samples"] + m["failed"]
                                                                        for m in metrics.get("lmms", {}).values()))
        run.metrics.update(metrics, cache={"hits": cache.hits, "misses": cache.misses})


if __name__ == "__main__":
    main()
