"""DVC stage `pack@<stage>`: plan packs under the token and ViT budgets, then materialise packed shards."""

from pathlib import Path

from llava_ov.artifacts import digest_file
from llava_ov.engine import Engine
from llava_ov.packing.build import build_packs, pack_metrics
from llava_ov.stage import TRAIN_STAGES, stage_run


def main() -> None:
    with stage_run("pack_{variant}", variants=TRAIN_STAGES) as run:
        cfg, image = run.params["pack"][run.variant], run.params["image"]
        ingest, tokenizer, lengths = run.open("ingest"), run.open("tokenizer"), run.open("lengths")
        with run.writer(params={"pack": cfg, "image": image}) as w:
            summary = build_packs(w.dir, lengths / "lengths.parquet", ingest.path, tokenizer.path, image, cfg,
                                  Engine.from_params(run.params), Path("cache/pack_shards"))
            # a pack records the digest of the lengths rows it read (content-addressed ids, shards, extents, lengths
            # of its own pools), not of the whole lengths or ingest artifact: a balance change or another pool's new
            # data leaves pack@stage1 byte-identical, and Stage-1 is not retrained on the same packs
            w.inputs = {"tokenizer": tokenizer, "lengths": summary.rows_digest}
            w.stats.update(capacity=cfg["capacity"], patch_capacity=cfg["patch_capacity"], packs=summary.packs,
                           samples=summary.samples, plan_digest=digest_file(w.dir / "plan.parquet"))
        run.metrics.update(pack_metrics(summary, cfg["capacity"]))


if __name__ == "__main__":
    main()
