"""DVC stage `concept_index`: fp16 embeddings and top-k concepts of every image of the mid-training pool.

Results are cached per source shard under ``cache/concept_index/`` keyed by (encoder digest, shard digest, k, code
digest; see ``llava_ov.concepts.pool_index``), so adding a source shard embeds only that shard.
"""

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.concepts.pool_index import index_pool
from llava_ov.data.reader import index, open_ingest
from llava_ov.file_cache import FileCache
from llava_ov.params import load_params

KIND, SCHEMA = "concept_index", 1
CACHE = Path("cache/concept_index")


def main() -> None:
    params = load_params()
    k = params["concepts"]["topk"]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ingest = open_ingest()
    enc_art = open_artifact("artifacts/concept_encoder", "concept_encoder", 1)
    concepts = np.load(enc_art / "concept_embeddings.npy")
    pool = index_pool(ingest, "mid", ImageTextEncoder.load(enc_art / "encoder"), enc_art.digest, concepts, k,
                      FileCache(CACHE, ".npz"))
    rows, meta = pool.sample_ids, {r["sample_id"]: r for r in index(ingest, ("mid",))}
    with ArtifactWriter("artifacts/concept_index", KIND, SCHEMA, params={"concepts.topk": k},
                        inputs={"ingest": ingest, "concept_encoder": enc_art}) as w:
        np.save(w.dir / "image_embeddings.npy", pool.embeddings)
        pq.write_table(pa.table({"sample_id": rows, "source": [meta[s]["source"] for s in rows],
                                 "shard": [meta[s]["shard"] for s in rows], "key": [meta[s]["key"] for s in rows],
                                 "concepts": pa.array(pool.ids.tolist(), pa.list_(pa.int32())),
                                 "similarities": pa.array(pool.sims.tolist(), pa.list_(pa.float32()))}),
                       w.dir / "index.parquet", compression="zstd")
        w.stats.update(images=len(rows), concepts=len(concepts), topk=k)
    metrics = {"images": len(rows), "concepts": len(concepts), "topk": k,
               "recall_at_5": enc_art.stats["recall_at_5"], "shards_reused": pool.reused,
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/concept_index.json", metrics)
    print(f"concept_index: {metrics}")


if __name__ == "__main__":
    main()
