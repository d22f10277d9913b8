"""DVC stage `concept_index`: fp16 embeddings and top-k concepts of every image of the mid-training pool.

Results are cached per source shard under ``cache/concept_index/`` keyed by (encoder digest, shard digest, k), so
adding a source shard embeds only that shard.
"""

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from llava_ov.artifacts import ArtifactWriter, digest_file, digest_json, open_artifact, write_json
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.concepts.index import streaming_topk
from llava_ov.data.reader import index, iter_samples, open_ingest
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
    encoder = ImageTextEncoder.load(enc_art / "encoder")
    concepts = np.load(enc_art / "concept_embeddings.npy")
    rows, embeddings, ids, sims, reused = [], [], [], [], 0
    for shard in sorted({r["shard"] for r in index(ingest, ("mid",))}):
        key = digest_json([enc_art.digest, digest_file(ingest.path / shard), k])
        cached = CACHE / f"{key}.npz"
        if cached.exists():
            part = np.load(cached)
            reused += 1
        else:
            samples = list(iter_samples(ingest, ("mid",), shards=(shard,)))
            emb = encoder.embed_images([images[0] for _, _, images in samples])
            top_ids, top_sims = streaming_topk(emb, concepts, k)
            part = {"sample_id": np.array([r["sample_id"] for r, _, _ in samples]), "emb": emb.astype(np.float16),
                    "ids": top_ids, "sims": top_sims}
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(cached, **part)
        embeddings.append(part["emb"])
        ids.append(part["ids"])
        sims.append(part["sims"])
        rows += part["sample_id"].tolist()
    meta = {r["sample_id"]: r for r in index(ingest, ("mid",))}
    ids, sims = np.concatenate(ids), np.concatenate(sims)
    with ArtifactWriter("artifacts/concept_index", KIND, SCHEMA, params={"concepts.topk": k},
                        inputs={"ingest": ingest, "concept_encoder": enc_art}) as w:
        np.save(w.dir / "image_embeddings.npy", np.concatenate(embeddings))
        pq.write_table(pa.table({"sample_id": rows, "source": [meta[s]["source"] for s in rows],
                                 "shard": [meta[s]["shard"] for s in rows], "key": [meta[s]["key"] for s in rows],
                                 "concepts": pa.array(ids.tolist(), pa.list_(pa.int32())),
                                 "similarities": pa.array(sims.tolist(), pa.list_(pa.float32()))}),
                       w.dir / "index.parquet", compression="zstd")
        w.stats.update(images=len(rows), concepts=len(concepts), topk=k)
    metrics = {"images": len(rows), "concepts": len(concepts), "topk": k,
               "recall_at_5": enc_art.stats["recall_at_5"], "shards_reused": reused,
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/concept_index.json", metrics)
    print(f"concept_index: {metrics}")


if __name__ == "__main__":
    main()
