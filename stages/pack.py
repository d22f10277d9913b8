"""DVC stage `pack@<stage>`: plan packs under the token and ViT budgets, then materialise packed shards."""

import sys
import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, digest_file, open_artifact, write_json
from llava_ov.data.reader import open_ingest
from llava_ov.engine import Engine
from llava_ov.packing.build import build_packs, pack_metrics
from llava_ov.params import load_params

KIND, SCHEMA = "pack", 2


def main(stage: str) -> None:
    params = load_params()
    cfg, image = params["pack"][stage], params["image"]
    t0 = time.perf_counter()
    ingest = open_ingest()
    tokenizer = open_artifact("artifacts/tokenizer", "tokenizer", 1)
    lengths = open_artifact("artifacts/lengths", "lengths", 2)
    with ArtifactWriter(f"artifacts/pack_{stage}", KIND, SCHEMA, params={"pack": cfg, "image": image}) as w:
        summary = build_packs(w.dir, lengths / "lengths.parquet", ingest.path, tokenizer.path, image, cfg,
                              Engine.from_params(params), Path("cache/pack_shards"))
        # a pack records the digest of the lengths rows it read (content-addressed ids, shards, extents, lengths of
        # its own pools), not of the whole lengths or ingest artifact: a balance change or another pool's new data
        # leaves pack@stage1 byte-identical, and Stage-1 is not retrained on the same packs
        w.inputs = {"tokenizer": tokenizer, "lengths": summary.rows_digest}
        w.stats.update(capacity=cfg["capacity"], patch_capacity=cfg["patch_capacity"], packs=summary.packs,
                       samples=summary.samples, plan_digest=digest_file(w.dir / "plan.parquet"))
    metrics = pack_metrics(summary, cfg["capacity"], time.perf_counter() - t0)
    write_json(f"metrics/pack_{stage}.json", metrics)
    print(f"pack@{stage}: {metrics}")


if __name__ == "__main__":
    main(sys.argv[1])
