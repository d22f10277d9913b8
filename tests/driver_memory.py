"""Peak RSS of the ``ingest`` driver (:func:`llava_ov.data.assemble.assemble`) on synthetic parts, in a process of
its own (a helper of test_ingest_engine).

``python -m tests.driver_memory write PARTS N PER_PART`` writes N parts of PER_PART kept ``mid`` samples each (rows,
uint64 arrays, rejections, summary and a stand-in shard: the driver links shards, it never reads one it need not
rewrite) plus one small eval part; ``python -m tests.driver_memory assemble PARTS OUT`` assembles them into OUT and
prints JSON: rows written and the process's peak RSS in bytes. Writing parts with the engine's tasks would cost
minutes at these sizes; what the driver reads is the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llava_ov.artifacts import write_json
from llava_ov.data.assemble import assemble
from llava_ov.data.parts import PART_SCHEMA, SUMMARY, Part


def _part(folder: Path, name: str, pool: str, ids: np.ndarray, images: np.ndarray) -> None:
    shard = f"{pool}/{name}.tar"
    (folder / pool).mkdir(parents=True)
    (folder / shard).write_bytes(b"stand-in shard")
    hexes = [f"{x:016x}" for x in ids.tolist()]
    n = len(ids)
    columns = {"sample_id": hexes, "pool": [pool] * n, "source": ["synthetic"] * n, "category": ["caption"] * n,
               "task": [""] * n, "shard": [shard] * n, "key": hexes, "n_images": np.ones(n, np.int32),
               "width": np.full(n, 4, np.int32), "height": np.full(n, 4, np.int32),
               "offset": np.arange(n, dtype=np.int64) * 2048, "size": np.full(n, 2048, np.int64),
               "origin": [str(i) for i in range(n)]}
    pq.write_table(pa.table(columns, schema=PART_SCHEMA), folder / f"{pool}.parquet", compression="zstd")
    np.savez(folder / f"{pool}.npz", content=ids, ids=ids, images=images)
    (folder / f"{pool}.rejects.jsonl").write_bytes(b"")
    write_json(folder / SUMMARY, {"file": name, "located": True, "format": "internal",
                                  "pools": {pool: {"shards": [shard], "kept": n, "rejected": 0,
                                                   "sources": {"synthetic": [n, 0]}, "reasons": {}}}})


def write_parts(root: Path, n_parts: int, per_part: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n_parts):
        ids = rng.integers(1, 2**63, per_part, dtype=np.uint64)
        _part(root / f"{i:06d}", f"part-{i:06d}", "mid", ids, ids ^ np.uint64(0x5A5A))
    evals = rng.integers(1, 2**63, 100, dtype=np.uint64)
    _part(root / "eval", "eval", "eval", evals, evals ^ np.uint64(0xA5A5))


def assemble_parts(root: Path, out: Path) -> None:
    parts = [Part.open(folder) for folder in sorted(root.iterdir())]  # "eval" sorts after the digits: last
    out.mkdir(parents=True)
    metrics = assemble(parts, out, dedupe=True).metrics
    print(json.dumps({"kept": metrics["kept"], "peak_rss": peak_rss()}))


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM of its own memory map. Not ``getrusage``: on Linux its ru_maxrss
    survives exec, so a child of a large process (pytest) would report its parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write_parts(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        assemble_parts(Path(sys.argv[2]), Path(sys.argv[3]))
