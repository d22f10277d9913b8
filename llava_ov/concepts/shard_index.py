"""``concept_index`` as a map over source shards and a merge in sorted shard order.

A worker (:class:`ShardIndexer`, one per GPU or CPU slot, see :mod:`llava_ov.actors`) holds the encoder and the
concept matrix on its device. Per shard it streams the tar, preprocesses each image with the encoder's own image
processor (on a thread pool, a batch ahead of the device), embeds batches in the configured dtype, takes the top-k
concepts against the resident matrix, hashes the sample ids for balancing's draws, and writes one cached part.

A part's key is its content: the encoder folder's digest, the concept matrix's digest, the shard's bytes, the
ingest rows it covers, ``k``, dtype, batch, whether embeddings are kept, the device type (a GPU's rounding is not a
CPU's), and :func:`llava_ov.code_digest.code_digest` of this module's import closure — the preprocessing, the
model call, the top-k, the tar reader — plus the numeric libraries' versions. An unchanged shard is a cache hit on
any machine that shares ``cache/``; a new shard computes only itself. An image the processor cannot read is a
rejection with its reason, counted per shard and in the artifact's ``rejects.jsonl``.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from llava_ov.actors import Slot, map_on_workers
from llava_ov.artifacts import Artifact, digest_json, write_jsonl
from llava_ov.code_digest import code_digest
from llava_ov.concepts.draws import id_hashes
from llava_ov.concepts.encoder import ImageTextEncoder, UnreadableImage
from llava_ov.concepts.index import topk_concepts
from llava_ov.data.reader import index_table, iter_samples, open_ingest, shards_of
from llava_ov.engine import Engine
from llava_ov.shard_cache import ShardCache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROW_GROUP = 1 << 20  # rows per row group of index.parquet: one group per ~1M images, whatever the shard size
INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("source", pa.string()), ("shard", pa.string()),
                          ("key", pa.string()), ("concepts", pa.list_(pa.int32())),
                          ("similarities", pa.list_(pa.float32())), ("id_hash", pa.uint64())])


@dataclass(frozen=True)
class IndexSpec:
    """What every worker needs: absolute paths (a worker on another node shares no working directory) and the
    parts' cache, whose keys fold in everything a part depends on except the shard itself."""

    encoder: str
    concepts: str
    k: int
    dtype: str
    batch: int
    embeddings: bool
    n_concepts: int
    cache: ShardCache


@dataclass(frozen=True)
class ShardJob:
    shard: str  # as in ingest's ``shard`` column (relative to the ingest artifact)
    ingest: str  # the ingest artifact, absolute
    digest: str  # the shard's content digest (the ingest artifact's file_digests: no re-read to key it)
    pools: tuple[str, ...]


@dataclass(frozen=True)
class ShardResult:
    shard: str
    part: str  # the cached part (.npz, a sealed cache entry), absolute
    images: int
    rejected: int
    reused: bool
    seconds: float
    worker_start: float  # seconds its worker took to load the encoder and the concept matrix (once per worker)


def make_spec(encoder: Artifact, k: int, cfg: dict, cache_root: Path) -> IndexSpec:
    """The spec of a run: ``cfg`` is ``params.yaml: concepts.index``. The encoder folder and the concept matrix are
    keyed by the digests the concept_encoder artifact recorded (a 4 GB encoder is not re-read to key it)."""
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"params.yaml concepts.index.dtype must be one of {sorted(DTYPES)}, not {cfg['dtype']!r}")
    enc, concepts = (encoder / "encoder").resolve(), (encoder / "concept_embeddings.npy").resolve()
    folder = digest_json({rel: d for rel, d in encoder.meta["file_digests"].items() if rel.startswith("encoder/")})
    cache = ShardCache(cache_root.resolve(), code=code_digest(__name__), suffix=".npz",
                       inputs={"encoder": folder, "concepts": encoder.file_digest("concept_embeddings.npy")},
                       params={"k": k, **cfg})
    return IndexSpec(encoder=str(enc), concepts=str(concepts), k=k, dtype=cfg["dtype"], batch=int(cfg["batch"]),
                     embeddings=bool(cfg["embeddings"]), n_concepts=len(np.load(concepts, mmap_mode="r")),
                     cache=cache)


def shard_jobs(ingest: Artifact, pools: tuple[str, ...]) -> list[ShardJob]:
    """One job per shard of ``pools``, in sorted shard order."""
    return [ShardJob(s, str(ingest.path.resolve()), ingest.file_digest(s), pools) for s in shards_of(ingest, pools)]


def index_shards(engine: Engine, spec: IndexSpec, jobs: list[ShardJob]) -> list[ShardResult]:
    """Every job's part (computed or reused), in job order, on one worker per GPU/CPU slot of the engine."""
    return map_on_workers(engine, partial(ShardIndexer, spec), "run", jobs, desc="concept_index")


def _reason(e: Exception) -> str:
    """A rejection reason without object addresses, so rejects.jsonl is byte-stable."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(e))


class ShardIndexer:
    """The per-slot worker: the encoder and the concept matrix resident on its device."""

    def __init__(self, spec: IndexSpec, slot: Slot) -> None:
        t0 = time.perf_counter()
        self.spec = spec
        torch.set_num_threads(slot.cpus)
        self.device = torch.device("cuda" if slot.gpu and torch.cuda.is_available() else "cpu")
        self.encoder = ImageTextEncoder.load(spec.encoder, self.device, DTYPES[spec.dtype])
        # the top-k matmul: float32 where the forward pass is, else float16 (unit vectors: range is no issue and
        # float16 keeps 3 more mantissa bits than bfloat16)
        self.matmul = torch.float32 if spec.dtype == "float32" else torch.float16
        concepts = np.load(spec.concepts)
        if concepts.shape[1] != self.encoder.model.config.projection_dim:
            raise ValueError(f"concept embeddings {spec.concepts} have width {concepts.shape[1]}, the encoder "
                             f"{spec.encoder} projects to {self.encoder.model.config.projection_dim}: rebuild "
                             f"concept_encoder")
        self.concepts = torch.from_numpy(concepts).to(self.device, self.matmul)
        # preprocessing threads run a batch ahead of the device; on a CPU slot the threads belong to torch
        self.pool = ThreadPoolExecutor(slot.cpus) if self.device.type == "cuda" and slot.cpus > 1 else None
        self.start_seconds = time.perf_counter() - t0

    def run(self, job: ShardJob) -> ShardResult:
        """The shard's part: read back if cached under its key, else computed and cached."""
        t0 = time.perf_counter()
        ingest = open_ingest(job.ingest)
        rows = index_table(ingest, job.pools, ["sample_id", "key", "source"], shard=job.shard).to_pydict()
        key = digest_json([job.digest, rows, self.device.type])  # the rows ingest kept; a GPU rounds unlike a CPU
        part = self.spec.cache.get(key)
        reused = part is not None
        if not reused:
            with self.spec.cache.writing(key) as tmp:
                np.savez(tmp, **self._index(ingest, job, rows))
            part = self.spec.cache.get(key)
        with np.load(part) as arrays:
            images, rejected = len(arrays["sample_id"]), len(arrays["reject_sample_id"])
        return ShardResult(job.shard, str(part), images, rejected, reused, time.perf_counter() - t0,
                           self.start_seconds)

    def _index(self, ingest: Artifact, job: ShardJob, rows: dict[str, list]) -> dict[str, np.ndarray]:
        row_of = {key: i for i, key in enumerate(rows["key"])}
        kept: list[int] = []
        rejects: dict[int, str] = {}
        ids, sims, embs = [], [], []
        samples = ((row["key"], images) for row, _, images in iter_samples(ingest, job.pools, shards=(job.shard,)))
        for batch, pixels in self._batches(samples, row_of, rejects):
            emb = self.encoder.embed_pixels(pixels)
            top_ids, top_sims = topk_concepts(emb.to(self.matmul), self.concepts, self.spec.k,
                                              concept_block=65536 if self.device.type == "cuda" else 16384)
            kept += batch
            ids.append(top_ids)
            sims.append(top_sims)
            if self.spec.embeddings:
                embs.append(emb.to(torch.float16).cpu().numpy())
        width = self.concepts.shape[1]
        sample_ids = [rows["sample_id"][i] for i in kept]
        out = {"sample_id": np.array(sample_ids, dtype=str), "key": np.array([rows["key"][i] for i in kept], dtype=str),
               "source": np.array([rows["source"][i] for i in kept], dtype=str),
               "ids": np.concatenate(ids) if ids else np.empty((0, self.spec.k), np.int32),
               "sims": np.concatenate(sims) if sims else np.empty((0, self.spec.k), np.float32),
               "id_hash": id_hashes(sample_ids)}
        if self.spec.embeddings:
            out["emb"] = np.concatenate(embs) if embs else np.empty((0, width), np.float16)
        order = sorted(rejects)
        out |= {"reject_sample_id": np.array([rows["sample_id"][i] for i in order], dtype=str),
                "reject_source": np.array([rows["source"][i] for i in order], dtype=str),
                "reject_reason": np.array([rejects[i] for i in order], dtype=str)}
        return out

    def _batches(self, samples: Iterator[tuple[str, list[bytes]]], row_of: dict[str, int],
                 rejects: dict[int, str]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(rows, pixels) of ``spec.batch`` readable images at a time, in shard order; unreadable ones go to
        ``rejects``. With a thread pool, batch i+1 is preprocessed while the caller runs batch i on the device."""
        pending: tuple[list[int], list] | None = None
        chunk: list[tuple[int, bytes | None]] = []
        for key, images in samples:
            chunk.append((row_of[key], images[0] if images else None))
            if len(chunk) == self.spec.batch:
                started, chunk = self._start(chunk), []
                if pending is not None:
                    yield from self._finish(pending, rejects)
                pending = started
        if pending is not None:
            yield from self._finish(pending, rejects)
        if chunk:
            yield from self._finish(self._start(chunk), rejects)

    def _start(self, chunk: list[tuple[int, bytes | None]]) -> tuple[list[int], list]:
        rows = [i for i, _ in chunk]
        if self.pool is None:
            return rows, [self._pixels(data) for _, data in chunk]
        return rows, [self.pool.submit(self._pixels, data) for _, data in chunk]

    def _finish(self, pending: tuple[list[int], list],
                rejects: dict[int, str]) -> Iterator[tuple[list[int], torch.Tensor]]:
        rows, results = pending
        results = [r.result() if self.pool is not None else r for r in results]
        for i, r in zip(rows, results):
            if isinstance(r, str):
                rejects[i] = r
        good = [(i, r) for i, r in zip(rows, results) if not isinstance(r, str)]
        if good:
            yield [i for i, _ in good], torch.stack([r for _, r in good])

    def _pixels(self, data: bytes | None) -> torch.Tensor | str:
        """Pixels of one image, or the reason it is rejected."""
        if data is None:
            return "sample has no image"
        try:
            return self.encoder.pixels(data)
        except UnreadableImage as e:
            return _reason(e)


def write_index(jobs: list[ShardJob], results: list[ShardResult], out: Path, embeddings: bool) -> dict:
    """Merge the parts in job (sorted shard) order into ``index.parquet``, ``rejects.jsonl`` and, if kept,
    ``image_embeddings.npy``, streaming: one part and one row group in memory. Returns the counts."""
    total = sum(r.images for r in results)
    emb_out = None
    rejects: list[dict] = []
    reasons: dict[str, int] = {}
    done = 0
    buffered: list[pa.Table] = []
    with pq.ParquetWriter(out / "index.parquet", INDEX_SCHEMA, compression="zstd") as writer:
        for job, result in tqdm(list(zip(jobs, results)), desc="concept_index: merge", unit="shard", mininterval=1.0):
            with np.load(result.part) as part:
                n, k = part["ids"].shape
                offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
                buffered.append(pa.table({
                    "sample_id": part["sample_id"], "source": part["source"], "shard": [job.shard] * n,
                    "key": part["key"], "concepts": pa.ListArray.from_arrays(offsets, part["ids"].ravel()),
                    "similarities": pa.ListArray.from_arrays(offsets, part["sims"].ravel()),
                    "id_hash": part["id_hash"]}, schema=INDEX_SCHEMA))
                if embeddings:
                    if emb_out is None:
                        emb_out = np.lib.format.open_memmap(out / "image_embeddings.npy", mode="w+",
                                                            dtype=np.float16, shape=(total, part["emb"].shape[1]))
                    emb_out[done:done + n] = part["emb"]
                for sid, source, reason in zip(part["reject_sample_id"], part["reject_source"], part["reject_reason"]):
                    rejects.append({"sample_id": str(sid), "source": str(source), "reason": str(reason)})
                    label = str(reason).split(" (")[0]
                    reasons[label] = reasons.get(label, 0) + 1
            done += n
            if sum(len(t) for t in buffered) >= ROW_GROUP:
                writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP)
                buffered = []
        if buffered:
            writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP)
    if emb_out is not None:
        emb_out.flush()
        del emb_out
    write_jsonl(out / "rejects.jsonl", rejects)
    return {"images": done, "rejected": len(rejects), "reject_reasons": dict(sorted(reasons.items())),
            "shards": len(results), "shards_reused": sum(r.reused for r in results)}
