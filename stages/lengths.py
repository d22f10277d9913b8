"""DVC stage `lengths`: exact token and patch counts of every training sample, one engine task per shard."""

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.data.reader import open_ingest
from llava_ov.engine import Engine
from llava_ov.packing.lengths import shard_jobs, shard_lengths, write_lengths
from llava_ov.params import load_params

KIND, SCHEMA = "lengths", 2
BALANCED_POOL = "mid"  # the pool concept balancing selects from


def main() -> None:
    params = load_params()
    cfg, image = params["lengths"], params["image"]
    t0 = time.perf_counter()
    ingest = open_ingest()
    tokenizer = open_artifact("artifacts/tokenizer", "tokenizer", 1)
    balance = open_artifact("artifacts/balance", "balance", 1)
    manifest = balance / "manifest.parquet"

    def keep(table: pa.Table) -> pa.Table:
        """A shard's rows; of `mid`, only the concept-balanced selection (read for this shard alone)."""
        if table.num_rows == 0 or table["pool"][0].as_py() != BALANCED_POOL:
            return table
        shard = table["shard"][0].as_py()
        selected = pq.read_table(manifest, columns=["sample_id"],
                                 filters=[("shard", "==", shard), ("selected", "==", True)])["sample_id"]
        return table.filter(pc.is_in(table["sample_id"], value_set=selected))

    jobs = shard_jobs(ingest, tokenizer, image, tuple(cfg["pools"]), Path("cache/lengths").resolve())
    parts = Engine.from_params(params).map(shard_lengths, jobs, desc="lengths")
    with ArtifactWriter("artifacts/lengths", KIND, SCHEMA, params={"lengths": cfg, "image": image},
                        inputs={"ingest": ingest, "tokenizer": tokenizer, "balance": balance}) as w:
        stats = write_lengths(parts, w.dir / "lengths.parquet", keep)
        w.stats.update(stats)
    metrics = {**stats, "mean_total": round(stats["tokens"] / max(stats["samples"], 1), 2),
               "shards": len(jobs), "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/lengths.json", metrics)
    print(f"lengths: {metrics}")


if __name__ == "__main__":
    main()
