"""DVC stage `concept_index`: top-k concepts (and optionally fp16 embeddings) of every image of the mid pool.

The map over source shards runs on the engine, one worker per GPU (or CPU slot), each part cached by content under
``cache/concept_index/`` (llava_ov/concepts/shard_index.py), so adding a shard computes only that shard.
"""

import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.concepts.shard_index import index_shards, make_spec, shard_jobs, write_index
from llava_ov.data.reader import open_ingest
from llava_ov.engine import Engine
from llava_ov.params import load_params

KIND, SCHEMA = "concept_index", 2
CACHE = Path("cache/concept_index")
POOLS = ("mid",)


def main() -> None:
    params = load_params()
    cfg = params["concepts"]
    t0 = time.perf_counter()
    ingest = open_ingest()
    enc_art = open_artifact("artifacts/concept_encoder", "concept_encoder", 1)
    spec = make_spec(enc_art, cfg["topk"], cfg["index"], CACHE)
    jobs = shard_jobs(ingest, POOLS)
    results = index_shards(Engine.from_params(params), spec, jobs)
    with ArtifactWriter("artifacts/concept_index", KIND, SCHEMA,
                        params={"concepts.topk": cfg["topk"], "concepts.index": cfg["index"]},
                        inputs={"ingest": ingest, "concept_encoder": enc_art}) as w:
        stats = write_index(jobs, results, w.dir, spec.embeddings)
        w.stats.update(stats, concepts=spec.n_concepts, topk=spec.k)
    metrics = {**stats, "concepts": spec.n_concepts, "topk": spec.k, "recall_at_5": enc_art.stats["recall_at_5"],
               "worker_start_seconds": round(max((r.worker_start for r in results), default=0.0), 2),
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/concept_index.json", metrics)
    print(f"concept_index: {metrics}")


if __name__ == "__main__":
    main()
