"""The ``ingest`` stage's library: build the embedded corpora, or validate released webdataset shards.

Both modes push every sample through :func:`llava_ov.data.validate.validate` and account for it exactly once:
kept (written to a pool's shards and ``index.parquet``) or rejected (``rejects.jsonl`` with a reason).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from tqdm import tqdm

from llava_ov.artifacts import digest_file, write_json, write_jsonl
from llava_ov.data.shards import ShardWriter, messages_text, read_shard, sample_id
from llava_ov.data.sources import POOLS, Candidate, digits, easyvqa, emoji, rendered
from llava_ov.data.validate import Rejected, ValidSample, validate

GENERATORS: dict[str, Callable[[dict[str, int], np.random.Generator], Iterator[Candidate]]] = {
    "emoji": emoji.generate,
    "easyvqa": easyvqa.generate,
    "digits": digits.generate,
    **{name: rendered.make_generator(name) for name in rendered.RENDERERS},
}
ARTIFACT = "artifacts/ingest"
INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("pool", pa.string()), ("source", pa.string()),
                          ("category", pa.string()), ("task", pa.string()), ("shard", pa.string()),
                          ("key", pa.string()), ("n_images", pa.int32()), ("width", pa.int32()),
                          ("height", pa.int32())])


@dataclass
class Ledger:
    """Every sample seen, kept or rejected, with per-source and per-pool counts that must reconcile."""

    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    pools: Counter = field(default_factory=Counter)
    seen: int = 0

    def keep(self, sample: ValidSample, pool: str, source: str, shard: str, key: str) -> None:
        self.seen += 1
        self.kept[source] += 1
        self.pools[pool] += 1
        w, h = sample.sizes[0] if sample.sizes else (0, 0)
        self.rows.append({"sample_id": sample.sample_id, "pool": pool, "source": source,
                          "category": str(sample.meta.get("category", "")), "task": str(sample.meta.get("task", "")),
                          "shard": shard, "key": key, "n_images": len(sample.images), "width": w, "height": h})

    def reject(self, sid: str, source: str, reason: str, where: str = "") -> None:
        self.seen += 1
        self.rejected[source] += 1
        self.rejects.append({"sample_id": sid, "source": source, "reason": reason, **({"where": where} if where else {})})

    def write(self, out: Path, seconds: float) -> dict:
        """Write index.parquet and rejects.jsonl; return the metrics (asserting in = kept + rejected)."""
        assert self.seen == sum(self.kept.values()) + sum(self.rejected.values()) == len(self.rows) + len(self.rejects)
        pq.write_table(pa.Table.from_pylist(self.rows, schema=INDEX_SCHEMA), out / "index.parquet",
                       compression="zstd")
        write_jsonl(out / "rejects.jsonl", self.rejects)
        sources = sorted(set(self.kept) | set(self.rejected))
        return {
            "sources": {s: {"samples": self.kept[s] + self.rejected[s], "kept": self.kept[s],
                            "rejected": self.rejected[s]} for s in sources},
            "pools": {p: self.pools[p] for p in POOLS if self.pools[p]},
            "total": self.seen, "kept": len(self.rows), "rejected": len(self.rejects),
            "reject_reasons": dict(sorted(Counter(r["reason"].split(" (")[0] for r in self.rejects).items())),
            "seconds": round(seconds, 2),
        }


def _files(c: Candidate, sid: str) -> dict[str, bytes]:
    meta = {"id": sid, "source": c.source, "category": c.category, "messages": c.messages, **c.extra}
    files = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")}
    for i, img in enumerate(c.images):
        files[f"{i}.png"] = img
    return files


def _source_rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, xxhash.xxh3_64_intdigest(source.encode())])


def build_embedded(cfg: dict, seed: int, out: Path) -> dict:
    """Generate every source's candidates, validate them, and write the four pools into ``out``."""
    t0 = time.perf_counter()
    ledger = Ledger()
    writers = {pool: ShardWriter(out / pool, pool, cfg.get("shard_max_bytes", 1 << 30)) for pool in POOLS}
    ids: dict[str, set[str]] = {pool: set() for pool in POOLS}
    held_back: list[tuple[Candidate, dict[str, bytes]]] = []
    training_images: set[str] = set()  # eval must not reuse a training image even under another question
    unknown = sorted(set(cfg["sources"]) - set(GENERATORS))
    if unknown:
        raise ValueError(f"params.yaml ingest.sources names unknown source(s) {unknown}; known: {sorted(GENERATORS)}")
    total = sum(sum(sizes.values()) for sizes in cfg["sources"].values())
    with tqdm(total=total, desc="ingest", unit="sample", mininterval=1.0) as bar:
        for source in sorted(cfg["sources"]):
            for cand in GENERATORS[source](cfg["sources"][source], _source_rng(seed, source)):
                bar.update()
                files = _files(cand, sample_id(cand.images, messages_text(cand.messages)))
                if cand.pool == "eval":
                    held_back.append((cand, files))  # written last: must be disjoint from every training pool
                    continue
                training_images.update(xxhash.xxh3_128_hexdigest(img) for img in cand.images)
                _admit(ledger, ids, cand.pool, cand.source, files, _shard_store(writers[cand.pool], files))
        training = set().union(*(ids[p] for p in POOLS if p != "eval"))
        for cand, files in held_back:
            if any(xxhash.xxh3_128_hexdigest(img) in training_images for img in cand.images):
                ledger.reject(sample_id(cand.images, messages_text(cand.messages)), cand.source,
                              "eval image also in a training pool")
                continue
            _admit(ledger, ids, "eval", cand.source, files, _shard_store(writers["eval"], files), training)
    for w in writers.values():
        w.close()
    return ledger.write(out, time.perf_counter() - t0)


def _admit(ledger: Ledger, ids: dict[str, set[str]], pool: str, source: str, files: dict[str, bytes],
           store: Callable[[ValidSample], tuple[str, str]], forbidden: frozenset[str] | set[str] = frozenset(),
           where: str = "") -> None:
    """Validate one sample and either keep it (``store`` places it, returning its shard and key) or reject it."""
    try:
        sample = validate(files)
    except Rejected as e:
        ledger.reject(_claimed_id(files), source, str(e), where)
        return
    if sample.sample_id in ids[pool]:
        ledger.reject(sample.sample_id, source, f"duplicate sample_id in pool {pool}", where)
    elif sample.sample_id in forbidden:
        ledger.reject(sample.sample_id, source, "eval sample also in a training pool", where)
    else:
        ids[pool].add(sample.sample_id)
        shard, key = store(sample)
        ledger.keep(sample, pool, source, shard, key)


def _shard_store(writer: ShardWriter, files: dict[str, bytes]) -> Callable[[ValidSample], tuple[str, str]]:
    def store(sample: ValidSample) -> tuple[str, str]:
        return f"{writer.prefix}/{writer.write(sample.sample_id, files)}", sample.sample_id

    return store


def _claimed_id(files: dict[str, bytes]) -> str:
    """Best-effort id of a sample that failed validation (its json id, else a hash of its raw members)."""
    try:
        return str(json.loads(files["json"].decode("utf-8"))["id"])
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        h = xxhash.xxh3_64()
        for name in sorted(files):
            h.update(name.encode() + b"\0" + files[name])
        return h.hexdigest()


def validate_released(cfg: dict, root: Path, out: Path) -> dict:
    """Validate released webdataset shards in place (one folder per pool); index them without copying.

    ``index.parquet`` points at the original shards by paths relative to the artifact folder, and
    ``shards.json`` records each shard's digest and counts, so a changed shard is visible in the artifact.
    A truncated or unreadable tar stops the stage with a :class:`~llava_ov.data.shards.ShardError` naming it.
    """
    t0 = time.perf_counter()
    ledger = Ledger()
    ids: dict[str, set[str]] = {pool: set() for pool in POOLS}
    shards: dict[str, dict] = {}
    for pool in POOLS:
        folder = cfg["released"].get(pool)
        if not folder:
            continue
        folder = root / folder
        paths = sorted(folder.glob("*.tar"))
        if not paths:
            raise FileNotFoundError(f"ingest.released.{pool}: no .tar shards in {folder}; put the released "
                                    f"webdataset shards there (see README, 'Real-scale profiles')")
        for path in tqdm(paths, desc=f"ingest {pool}", unit="shard"):
            rel = os.path.relpath(path.resolve(), (root / ARTIFACT).resolve())
            n_before = ledger.seen
            for raw in read_shard(path):
                where = f"{path.name}:{raw.key}"
                source = pool
                if raw.error:
                    ledger.reject(raw.key, source, raw.error, where)
                    continue
                try:
                    meta = json.loads(raw.files.get("json", b"{}").decode("utf-8"))
                    source = str(meta.get("source") or pool) if isinstance(meta, dict) else pool
                except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                    pass
                _admit(ledger, ids, pool, source, raw.files, lambda _s, k=raw.key: (rel, k), where=where)
            shards[rel] = {"digest": digest_file(path), "samples": ledger.seen - n_before}
    if not shards:
        raise ValueError("ingest.mode is 'released' but ingest.released names no pool folders")
    write_json(out / "shards.json", shards)
    return ledger.write(out, time.perf_counter() - t0)
