"""DVC stage `pack@<stage>`: plan packs under the token and ViT budgets, then materialise packed shards."""

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from llava_ov.artifacts import ArtifactWriter, digest_file, open_artifact, write_json, write_jsonl
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.packing.lengths import pool_rows
from llava_ov.packing.materialize import pack_bytes, packs_per_shard, write_packed_shards
from llava_ov.packing.plan import plan_packs
from llava_ov.params import load_params
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor

KIND, SCHEMA = "pack", 1


def main(stage: str) -> None:
    params = load_params()
    cfg, image = params["pack"][stage], params["image"]
    t0 = time.perf_counter()
    ingest = open_ingest()
    tokenizer = open_artifact("artifacts/tokenizer", "tokenizer", 1)
    lengths_art = open_artifact("artifacts/lengths", "lengths", 1)
    rows, rows_digest = pool_rows(pq.read_table(lengths_art / "lengths.parquet"), cfg["pools"])
    table = {name: rows[name].to_numpy(zero_copy_only=False) for name in rows.column_names}
    capacity, patch_capacity = cfg["capacity"], cfg["patch_capacity"]
    plan = plan_packs(table["total"], capacity, table["vit_patches"], patch_capacity)
    packs = [table["sample_id"][plan.members[a:b]].tolist()
             for a, b in zip(plan.offsets[:-1], plan.offsets[1:])]
    rejects = [{"sample_id": table["sample_id"][i], "source": table["source"][i],
                "reason": f"{table['total'][i]} tokens / {table['vit_patches'][i]} patches exceed the pack budget "
                          f"({capacity} tokens / {patch_capacity} patches)"} for i in plan.rejected]
    wanted = set(table["sample_id"])
    samples = {row["sample_id"]: (meta, images) for row, meta, images in iter_samples(ingest, tuple(cfg["pools"]))
               if row["sample_id"] in wanted}
    lengths = dict(zip(table["sample_id"], table["total"].astype(int)))
    per_shard = packs_per_shard([pack_bytes(sum(lengths[s] for s in pack), [im for s in pack for im in samples[s][1]])
                                 for pack in packs], cfg["shard_bytes"])
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tokenizer.path))
    with ArtifactWriter(f"artifacts/pack_{stage}", KIND, SCHEMA, params={"pack": cfg, "image": image},
                        inputs={"ingest": ingest, "tokenizer": tokenizer, "lengths": rows_digest}) as w:
        pq.write_table(pa.table({"pack": np.repeat(np.arange(plan.n_packs), np.diff(plan.offsets)),
                                 "sample_id": [s for p in packs for s in p]}), w.dir / "plan.parquet",
                       compression="zstd")
        write_jsonl(w.dir / "rejects.jsonl", rejects)
        names = write_packed_shards(w.dir / "shards", packs, lengths, samples, encoder, ImageProcessor(**image),
                                    per_shard, Path("cache/pack_shards"))
        write_json(w.dir / "shards.json", names)
        shard_bytes = sum((w.dir / "shards" / f"{name}.tar").stat().st_size for name in names)
        w.stats.update(capacity=capacity, patch_capacity=patch_capacity, packs=plan.n_packs, shards=len(names),
                       packs_per_shard=per_shard,
                       samples=int(len(plan.members)), plan_digest=digest_file(w.dir / "plan.parquet"))
    total = int(table["total"][plan.members].sum())
    lower = -(-total // capacity)
    metrics = {"samples": int(len(plan.members)), "packs": plan.n_packs, "capacity": capacity,
               "fill": round(total / (plan.n_packs * capacity), 4), "lower_bound_packs": lower,
               "gap": round((plan.n_packs - lower) / lower, 5),
               "padding_compression": round(len(plan.members) / plan.n_packs, 3),
               "rejected": len(rejects), "shards": len(names), "mean_shard_bytes": shard_bytes // max(1, len(names)),
               "seconds": round(time.perf_counter() - t0, 2)}
    assert metrics["samples"] + metrics["rejected"] == len(table["sample_id"])
    write_json(f"metrics/pack_{stage}.json", metrics)
    print(f"pack@{stage}: {metrics}")


if __name__ == "__main__":
    main(sys.argv[1])
