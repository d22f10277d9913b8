"""DVC stage `lengths`: exact token and patch counts of every training sample, one engine task per shard."""

from pathlib import Path

from llava_ov.engine import Engine
from llava_ov.packing.lengths import balanced_selection, shard_jobs, shard_lengths, write_lengths
from llava_ov.stage import stage_run


def main() -> None:
    with stage_run("lengths") as run:
        cfg, image = run.params["lengths"], run.params["image"]
        ingest, tokenizer, balance = run.open("ingest"), run.open("tokenizer"), run.open("balance")
        jobs = shard_jobs(ingest, tokenizer, image, tuple(cfg["pools"]), Path("cache/lengths").resolve())
        computed = sum(job.cache.get(job.digest) is None for job in jobs)  # the rest are served by the cache
        parts = Engine.from_params(run.params).map(shard_lengths, jobs, desc="lengths")
        with run.writer(params={"lengths": cfg, "image": image},
                        inputs={"ingest": ingest, "tokenizer": tokenizer, "balance": balance}) as w:
            stats = write_lengths(parts, w.dir / "lengths.parquet", balanced_selection(balance / "manifest.parquet"))
            w.stats.update(stats)
        run.metrics.update(stats, mean_total=round(stats["tokens"] / max(stats["samples"], 1), 2), shards=len(jobs),
                           shards_computed=computed)


if __name__ == "__main__":
    main()
