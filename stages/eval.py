"""DVC stage `eval@<stage>`: evaluate one checkpoint on the offline tasks (cached), plus the blind baseline.

Usage: ``python -m stages.eval <stage> <checkpoint folder>``. Writes ``artifacts/eval_<stage>`` (the pinned task
list and per-sample predictions) and ``metrics/eval_<stage>.json`` (``<task>.<metric>``, ``category.<name>.<metric>``).
"""

import sys
import time

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json, write_jsonl
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.eval.blind import cached_blind_baseline
from llava_ov.eval.cache import ResultCache
from llava_ov.eval.runner import category_metrics, evaluate
from llava_ov.eval.tasks import build_task, load_spec
from llava_ov.params import section

KIND, SCHEMA = "eval", 1


def main() -> None:
    stage, checkpoint = sys.argv[1], sys.argv[2]
    cfg = section("eval")
    t0 = time.perf_counter()
    ingest = open_ingest()
    ckpt = open_artifact(checkpoint, "hf_model", 1)
    eval_samples = [(sample, images) for _, sample, images in iter_samples(ingest, ("eval",))]
    tasks = [build_task(load_spec(name), eval_samples, cfg["max_items"]) for name in cfg["tasks"]]
    cache = ResultCache(cfg["cache_dir"])
    blind = cached_blind_baseline(ingest, tuple(cfg["blind_pools"]), cache)
    ckpt_digest, results = evaluate(ckpt.path, tasks, cache, batch_size=cfg["batch_size"], workers=cfg["workers"],
                                    threads=cfg["threads"])

    metrics: dict = {}
    for task in tasks:
        metrics[task.name] = dict(results[task.name]["summary"])
        if task.spec["blind_baseline"]:
            metrics[task.name]["blind_accuracy"] = blind.accuracy(task)
    metrics["category"] = category_metrics(results)
    with ArtifactWriter(f"artifacts/eval_{stage}", KIND, SCHEMA, params={"eval": cfg},
                        inputs={"ingest": ingest, "checkpoint": ckpt}) as w:
        write_json(w.dir / "tasks.json", {t.name: {"digest": t.digest, "items": len(t.items), "spec": t.spec}
                                          for t in tasks})
        (w.dir / "predictions").mkdir()
        for task in tasks:
            write_jsonl(w.dir / "predictions" / f"{task.name}.jsonl", results[task.name]["samples"])
        write_json(w.dir / "metrics.json", metrics)
        w.stats.update(checkpoint_digest=ckpt_digest, tasks=len(tasks), items=sum(len(t.items) for t in tasks))
    metrics["cache"] = {"hits": cache.hits, "misses": cache.misses}
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(f"metrics/eval_{stage}.json", metrics)
    print(f"eval@{stage}: " + ", ".join(f"{t.name} {metrics[t.name]}" for t in tasks), file=sys.stderr)


if __name__ == "__main__":
    main()
