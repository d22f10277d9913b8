"""DVC stage `lengths`: exact token and patch counts of every training sample."""

import time

import pyarrow.parquet as pq

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.data.reader import open_ingest
from llava_ov.packing.lengths import compute_lengths
from llava_ov.params import load_params

KIND, SCHEMA = "lengths", 1


def main() -> None:
    params = load_params()
    cfg, image = params["lengths"], params["image"]
    t0 = time.perf_counter()
    ingest = open_ingest()
    tokenizer = open_artifact("artifacts/tokenizer", "tokenizer", 1)
    balance = open_artifact("artifacts/balance", "balance", 1)
    manifest = pq.read_table(balance / "manifest.parquet", columns=["sample_id", "selected"]).to_pylist()
    keep = {"mid": {r["sample_id"] for r in manifest if r["selected"]}}  # the concept-balanced subset
    with ArtifactWriter("artifacts/lengths", KIND, SCHEMA, params={"lengths": cfg, "image": image},
                        inputs={"ingest": ingest, "tokenizer": tokenizer, "balance": balance}) as w:
        table = compute_lengths(ingest.path, tokenizer.path, image, tuple(cfg["pools"]), keep=keep,
                                workers=cfg["workers"])
        pq.write_table(table, w.dir / "lengths.parquet", compression="zstd")
        totals = table.column("total").to_numpy()
        w.stats.update(samples=len(table), tokens=int(totals.sum()), max_total=int(totals.max()))
    metrics = {**w.stats, "mean_total": round(float(totals.mean()), 2), "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/lengths.json", metrics)
    print(f"lengths: {metrics}")


if __name__ == "__main__":
    main()
