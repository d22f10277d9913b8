"""Pack artifacts for tests, built by the pipeline's own code: an ingest-shaped artifact of the given samples, their
lengths (one engine task per shard, in this process), then plan + packed shards + pack index."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llava_ov.artifacts import Artifact, ArtifactWriter, digest_file, open_artifact
from llava_ov.data.shards import ShardWriter
from llava_ov.engine import Engine
from llava_ov.packing.build import PlanSummary, build_packs
from llava_ov.packing.lengths import shard_jobs, shard_lengths, write_lengths

LOCAL = Engine(executor="local")


def write_ingest(root: Path, samples: list[tuple[str, dict, list[bytes]]], pool: str = "align",
                 per_shard: int = 1000) -> Artifact:
    """``samples`` (id, json with ``messages``, image bytes) as an ingest artifact of one pool (internal schema)."""
    rows = []
    with ArtifactWriter(root / "ingest", "ingest", 1) as w:
        with ShardWriter(w.dir / pool, pool) as writer:
            for i, (sid, meta, images) in enumerate(samples):
                if i and i % per_shard == 0:
                    writer.close()
                files = {"json": json.dumps({"id": sid, "source": "test", **meta}).encode(),
                         **{f"{j}.png": img for j, img in enumerate(images)}}
                rows.append({"sample_id": sid, "pool": pool, "shard": f"{pool}/{writer.write(sid, files).shard}",
                             "key": sid, "n_images": len(images)})
        pq.write_table(pa.Table.from_pylist(rows), w.dir / "index.parquet")
    return w.artifact


def write_tokenizer(root: Path, tokenizer) -> Artifact:
    with ArtifactWriter(root / "tokenizer", "tokenizer", 1) as w:
        tokenizer.save_pretrained(w.dir)
    return w.artifact


def measure(root: Path, ingest: Artifact, tokenizer: Artifact, image: dict, pools=("align",)) -> Path:
    """``lengths.parquet`` of every sample of ``pools`` (cached under ``root/cache/lengths``)."""
    jobs = shard_jobs(ingest, tokenizer, image, tuple(pools), root / "cache" / "lengths")
    out = root / "lengths.parquet"
    write_lengths(LOCAL.map(shard_lengths, jobs, desc="lengths"), out)
    return out


def make_packs(root: Path, ingest: Artifact, tokenizer: Artifact, lengths: Path, image: dict, capacity: int,
               shard_bytes: int, name: str = "pack", pools=("align",), group_samples: int = 100_000,
               cache: Path | None = None) -> tuple[Artifact, PlanSummary]:
    """A pack artifact; ``shard_bytes`` 1 puts every pack in a shard of its own."""
    cfg = {"pools": list(pools), "capacity": capacity, "patch_capacity": 1 << 20, "shard_bytes": shard_bytes,
           "plan_group_samples": group_samples}
    with ArtifactWriter(root / name, "pack", 2) as w:
        summary = build_packs(w.dir, lengths, ingest.path, tokenizer.path, image, cfg, LOCAL,
                              cache or root / "cache" / "pack_shards")
        w.stats.update(capacity=capacity, packs=summary.packs, samples=summary.samples,
                       plan_digest=digest_file(w.dir / "plan.parquet"))
    return open_artifact(root / name, "pack", 2), summary
