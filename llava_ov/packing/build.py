"""A pack artifact at any scale: the plan in groups of source shards, then one task per packed shard.

Planning reads only the lengths rows of the stage's pools (``offset``/``size`` included) and works on numpy
columns, one group at a time. A group is a run of consecutive source shards (sorted) holding at least
``plan_group_samples`` samples, closed only after a shard whose name hashes to a boundary: the boundaries are
content-defined, so adding or removing one source shard re-plans its own group (and at most the next), and every
other group keeps its packs and packed shards byte for byte. Packs never span groups, packed shards never span
groups, and a packed shard is named by the digest of its members, so an unchanged group's shards keep their names
and are served from the cache. The plan is written first (``plan.parquet``: every sample's pack, packed shard and
slot, and where its bytes are); materialisation is one engine task per packed shard, which reads its own rows of
the plan back (pushdown on ``out_shard``), seeks each member in its ingest shard and writes one tar: memory per task
is one packed shard. ``packs.parquet`` then records each pack's shard and byte extent, which is all the loader needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from transformers import AutoTokenizer

from llava_ov.artifacts import write_json, write_jsonl
from llava_ov.engine import Engine
from llava_ov.file_cache import FileCache, link_or_copy
from llava_ov.packing.materialize import ShardTask, encoding_digest, materialize_shard, pack_bytes, packs_per_shard
from llava_ov.packing.plan import plan_packs
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import ImageProcessor

PLAN_SCHEMA = pa.schema([("pack", pa.int64()), ("out_shard", pa.int64()), ("slot", pa.int32()),
                         ("sample_id", pa.string()), ("source", pa.string()), ("shard", pa.string()),
                         ("key", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("total", pa.int32()),
                         ("vit_patches", pa.int32()), ("n_images", pa.int32()), ("image_bytes", pa.int64())])
PACKS_SCHEMA = pa.schema([("pack", pa.int64()), ("shard", pa.string()), ("key", pa.string()),
                          ("offset", pa.int64()), ("size", pa.int64()), ("samples", pa.int32()),
                          ("tokens", pa.int32())])
BOUNDARY_EVERY = 4  # about one shard name in 4 may close a group once it is big enough


def plan_groups(shards: list[str], counts: list[int], min_samples: int) -> list[list[int]]:
    """Consecutive runs of ``shards`` (indices) of at least ``min_samples`` samples, with content-defined ends.

    A run ends after a shard whose name hashes to 0 mod :data:`BOUNDARY_EVERY` once the run holds ``min_samples``,
    or unconditionally at ``BOUNDARY_EVERY x min_samples``; the last run takes what is left. An inserted shard
    therefore moves the boundaries of its own run only (they resynchronise at the next name-defined end).
    """
    groups, current, held = [], [], 0
    for i, (name, n) in enumerate(zip(shards, counts)):
        current.append(i)
        held += n
        boundary = xxhash.xxh3_64_intdigest(name.encode()) % BOUNDARY_EVERY == 0
        if held >= min_samples and (boundary or held >= BOUNDARY_EVERY * min_samples):
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


@dataclass
class PlanSummary:
    """Counts of a written plan; ``rows_digest`` is the digest of exactly the lengths rows it read."""

    candidates: int = 0  # lengths rows of the pools: packed + rejected
    samples: int = 0
    packs: int = 0
    tokens: int = 0
    out_shards: int = 0
    groups: int = 0
    rejected: list[dict] = field(default_factory=list)
    rows_digest: str = ""
    shard_bytes: int = 0  # bytes of the packed shards written
    shards_computed: int = 0  # packed shards encoded in this run (the others served by the cache)


def write_plan(lengths: Path, pools: list[str], capacity: int, patch_capacity: int, shard_bytes: int,
               group_samples: int, out: Path) -> PlanSummary:
    """Plan every group of the pools' lengths rows and write ``out`` (``plan.parquet``, :data:`PLAN_SCHEMA`)."""
    pool_filter = [("pool", "in", list(pools))]
    per_shard = pq.read_table(lengths, columns=["shard"], filters=pool_filter)["shard"].value_counts()
    names = [v.as_py() for v in per_shard.field("values")]
    counts = dict(zip(names, per_shard.field("counts").to_pylist()))
    names = sorted(names)
    summary, digest = PlanSummary(candidates=sum(counts.values())), xxhash.xxh3_128()
    columns = ["sample_id", "source", "shard", "key", "offset", "size", "total", "vit_patches", "n_images",
               "image_bytes"]
    with pq.ParquetWriter(out, PLAN_SCHEMA, compression="zstd") as writer:
        for group in plan_groups(names, [counts[n] for n in names], group_samples):
            shards = [names[i] for i in group]
            rows = pq.read_table(lengths, filters=pool_filter + [("shard", "in", shards)])  # file order = shard order
            digest.update(_ipc_bytes(rows.select(sorted(rows.column_names))))
            _plan_group(rows.select(columns), capacity, patch_capacity, shard_bytes, writer, summary)
            summary.groups += 1
    summary.rows_digest = digest.hexdigest()
    return summary


def _plan_group(rows: pa.Table, capacity: int, patch_capacity: int, shard_bytes: int,
                writer: pq.ParquetWriter, summary: PlanSummary) -> None:
    total, patches = rows["total"].to_numpy(), rows["vit_patches"].to_numpy()
    plan = plan_packs(total, capacity, patches, patch_capacity)
    for i in plan.rejected:
        summary.rejected.append({"sample_id": rows["sample_id"][int(i)].as_py(),
                                 "source": rows["source"][int(i)].as_py(),
                                 "reason": f"{int(total[i])} tokens / {int(patches[i])} patches exceed the pack budget "
                                           f"({capacity} tokens / {patch_capacity} patches)"})
    if not plan.n_packs:
        return
    per_pack = [plan.pack_sums(rows[c].to_numpy().astype(np.int64)) for c in ("total", "n_images", "image_bytes")]
    per_shard = packs_per_shard(pack_bytes(*per_pack), shard_bytes)
    sizes = np.diff(plan.offsets)
    pack = np.repeat(np.arange(plan.n_packs), sizes)
    slot = np.arange(len(plan.members)) - np.repeat(plan.offsets[:-1], sizes)
    chosen = rows.take(pa.array(plan.members))
    out_shard = summary.out_shards + pack // per_shard
    table = pa.table({"pack": summary.packs + pack, "out_shard": out_shard, "slot": slot.astype(np.int32),
                      **{name: chosen[name] for name in PLAN_SCHEMA.names[3:]}}, schema=PLAN_SCHEMA)
    writer.write_table(table)
    summary.samples += len(plan.members)
    summary.tokens += int(total[plan.members].sum())
    summary.packs += plan.n_packs
    summary.out_shards += -(-plan.n_packs // per_shard)


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as stream:
        stream.write_table(table.replace_schema_metadata(None))
    return sink.getvalue().to_pybytes()


def write_pack_index(results: list[tuple[str, str, list[tuple[int, int]], bool]], plan: Path, shards_dir: Path,
                     out: Path) -> list[str]:
    """Place each packed shard (in plan order) into ``shards_dir`` and write ``out`` (``packs.parquet``).

    ``results`` are :func:`~llava_ov.packing.materialize.materialize_shard`'s, one per packed shard in order; the
    pack numbers, sample counts and tokens come from the plan, read one column set at a time.
    """
    shards_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, cached, _, _ in results:
        link_or_copy(Path(cached), shards_dir / f"{name}.tar")
        names.append(name)
    per_pack = pq.read_table(plan, columns=["pack", "total"]).group_by("pack").aggregate(
        [("total", "count"), ("total", "sum")]).sort_by("pack")
    extents = [(name, f"{j:06d}", offset, size) for name, _, packs, _ in results
               for j, (offset, size) in enumerate(packs)]
    if len(extents) != per_pack.num_rows:
        raise RuntimeError(f"{len(extents)} packs written for {per_pack.num_rows} planned")
    pq.write_table(pa.table({"pack": per_pack["pack"], "shard": [e[0] for e in extents],
                             "key": [e[1] for e in extents], "offset": [e[2] for e in extents],
                             "size": [e[3] for e in extents], "samples": per_pack["total_count"].cast(pa.int32()),
                             "tokens": per_pack["total_sum"].cast(pa.int32())}, schema=PACKS_SCHEMA),
                   out, compression="zstd")
    return names


def pack_metrics(summary: PlanSummary, capacity: int) -> dict:
    """The pack stage's metrics (``metrics/pack_<stage>.json``); in = packed + rejected must reconcile."""
    lower = -(-summary.tokens // capacity)
    metrics = {"samples": summary.samples, "packs": summary.packs, "capacity": capacity,
               "fill": round(summary.tokens / max(summary.packs * capacity, 1), 4), "lower_bound_packs": lower,
               "gap": round((summary.packs - lower) / max(lower, 1), 5),
               "padding_compression": round(summary.samples / max(summary.packs, 1), 3),
               "rejected": len(summary.rejected), "shards": summary.out_shards, "plan_groups": summary.groups,
               "mean_shard_bytes": summary.shard_bytes // max(summary.out_shards, 1),
               "shards_computed": summary.shards_computed}
    if metrics["samples"] + metrics["rejected"] != summary.candidates:
        raise RuntimeError(f"pack accounting: {metrics['samples']} packed + {metrics['rejected']} rejected != "
                           f"{summary.candidates} samples of the pools")
    return metrics


def build_packs(out: Path, lengths: Path, ingest: Path, tokenizer: Path, image: dict, cfg: dict, engine: Engine,
                cache: Path) -> PlanSummary:
    """Write a pack artifact's files into ``out``: plan, rejects, packed shards (one engine task each), pack index.

    ``cfg`` is one ``pack.<stage>`` params entry; ``cache`` the packed-shard cache folder (shared by the stages).
    """
    plan = out / "plan.parquet"
    summary = write_plan(lengths, cfg["pools"], cfg["capacity"], cfg["patch_capacity"], cfg["shard_bytes"],
                         cfg["plan_group_samples"], plan)
    write_jsonl(out / "rejects.jsonl", summary.rejected)
    encoding = encoding_digest(ChatEncoder(AutoTokenizer.from_pretrained(tokenizer)), ImageProcessor(**image))
    files = FileCache(cache.resolve(), ".tar")
    tasks = [ShardTask(str(plan.resolve()), k, str(ingest.resolve()), str(tokenizer.resolve()), image, files,
                       encoding) for k in range(summary.out_shards)]
    results = engine.map(materialize_shard, tasks, desc="packed shards")
    write_json(out / "shards.json", write_pack_index(results, plan, out / "shards", out / "packs.parquet"))
    summary.shards_computed = sum(computed for *_, computed in results)
    summary.shard_bytes = sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))
    return summary
