"""DVC stage `concept_index`: top-k concepts (and optionally fp16 embeddings) of every image of the mid pool.

The map over source shards runs on the engine, one worker per GPU (or CPU slot), each part cached by content under
``cache/concept_index/`` (llava_ov/concepts/shard_index.py), so adding a shard computes only that shard.
"""

from pathlib import Path

from llava_ov.concepts.shard_index import index_shards, make_spec, shard_jobs, write_index
from llava_ov.engine import Engine
from llava_ov.stage import stage_run

CACHE = Path("cache/concept_index")
POOLS = ("mid",)


def main() -> None:
    with stage_run("concept_index") as run:
        cfg = run.params["concepts"]
        ingest, enc_art = run.open("ingest"), run.open("concept_encoder")
        spec = make_spec(enc_art, cfg["topk"], cfg["index"], CACHE)
        jobs = shard_jobs(ingest, POOLS)
        results = index_shards(Engine.from_params(run.params), spec, jobs)
        with run.writer(params={"concepts.topk": cfg["topk"], "concepts.index": cfg["index"]},
                        inputs={"ingest": ingest, "concept_encoder": enc_art}) as w:
            stats = write_index(jobs, results, w.dir, spec.embeddings)
            w.stats.update(stats, concepts=spec.n_concepts, topk=spec.k)
        run.metrics.update(stats, concepts=spec.n_concepts, topk=spec.k, recall_at_5=enc_art.stats["recall_at_5"],
                           worker_start_seconds=round(max((r.worker_start for r in results), default=0.0), 2))


if __name__ == "__main__":
    main()
