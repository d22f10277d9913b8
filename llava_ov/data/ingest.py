"""The ``ingest`` stage's library: build the embedded corpora (released datasets: :mod:`llava_ov.data.released`).

One engine task per source (its generator draws every pool from one seeded stream, so a source is the unit that
can run alone and reproduce its bytes): it generates the source's candidates, admits each
(:func:`~llava_ov.data.admission.admit`) and writes a part (:mod:`llava_ov.data.parts`) with the source's shards
``<pool>/<source>-NNNNNN.tar``. The driver then settles duplicates across sources and the eval pool against the
training pools (:mod:`llava_ov.data.settle`) and streams the parts into the artifact
(:mod:`llava_ov.data.assemble`). Every sample is accounted
for exactly once: kept (a shard and ``index.parquet``) or rejected (``rejects.jsonl`` with a reason).

Parts are built in a scratch folder, never cached across runs: the corpora's real inputs are package data and
image libraries that no code digest pins, and building them takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import xxhash
from tqdm import tqdm

from llava_ov.data.admission import admit
from llava_ov.data.assemble import LOCAL, assemble, cache_or_scratch, map_largest_first
from llava_ov.data.filters import Filters
from llava_ov.data.parts import Part, PartWriter
from llava_ov.data.shards import DEFAULT_MAX_SHARD_BYTES, messages_text, sample_id
from llava_ov.data.sources import POOLS, Candidate, digits, easyvqa, emoji, rendered
from llava_ov.data.validate import Rejected
from llava_ov.engine import Engine

GENERATORS: dict[str, Callable[[dict[str, int], np.random.Generator], Iterator[Candidate]]] = {
    "emoji": emoji.generate,
    "easyvqa": easyvqa.generate,
    "digits": digits.generate,
    **{name: rendered.make_generator(name) for name in rendered.RENDERERS},
}
ARTIFACT = "artifacts/ingest"


def _meta(c: Candidate) -> dict:
    return {"source": c.source, "category": c.category, "messages": c.messages, **c.extra}


def _source_rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, xxhash.xxh3_64_intdigest(source.encode())])


@dataclass(frozen=True)
class SourceJob:
    """One embedded source to build into the part folder ``folder`` (absolute)."""

    source: str
    sizes: dict[str, int]
    seed: int
    dedupe: bool
    filters: dict[str, Filters]
    max_bytes: int
    folder: str
    generate: Callable[[dict[str, int], np.random.Generator], Iterator[Candidate]]


def build_source(job: SourceJob) -> str:
    """The engine task of one source: generate, admit and write its part; returns the part's folder."""
    folder = Path(job.folder)
    folder.mkdir(parents=True)
    part = PartWriter(folder, job.source, job.source, job.dedupe, located=False, numbered=True,
                      max_bytes=job.max_bytes)
    candidates = job.generate(job.sizes, _source_rng(job.seed, job.source))
    for n, cand in enumerate(tqdm(candidates, total=sum(job.sizes.values()), desc=job.source, unit="sample",
                                  leave=False, mininterval=2.0)):
        members = {f"{i}.png": img for i, img in enumerate(cand.images)}
        try:
            sample = admit(_meta(cand), members, job.filters[cand.pool])
        except Rejected as e:
            content = e.sample_id or sample_id(cand.images, messages_text(cand.messages))
            part.reject(cand.pool, content, cand.source, str(e), str(n))
            continue
        part.keep(cand.pool, sample, cand.source, str(n), _meta(cand), members)
    part.close()
    return str(folder)


def build_embedded(cfg: dict, seed: int, out: Path, *, engine: Engine = LOCAL) -> dict:
    """Generate every source's candidates (one engine task per source), validate them, and write the four pools
    into ``out``; the eval pool is kept disjoint from every training pool (no shared image, no shared sample)."""
    t0 = time.perf_counter()
    unknown = sorted(set(cfg["sources"]) - set(GENERATORS))
    if unknown:
        raise ValueError(f"params.yaml ingest.sources names unknown source(s) {unknown}; known: {sorted(GENERATORS)}")
    filters = {pool: Filters.from_params((cfg.get("filters") or {}).get(pool)) for pool in POOLS}
    dedupe = cfg.get("dedupe", True)
    with cache_or_scratch(None, out) as scratch:
        jobs = [SourceJob(source, dict(cfg["sources"][source]), seed, dedupe, filters,
                          cfg.get("shard_max_bytes", DEFAULT_MAX_SHARD_BYTES), str(scratch / source),
                          GENERATORS[source]) for source in sorted(cfg["sources"])]
        folders = map_largest_first(engine, build_source, jobs, [sum(j.sizes.values()) for j in jobs],
                                    desc="ingest")
        assembled = assemble([Part.open(folder) for folder in folders], out, dedupe)
    return {**assembled.metrics, "seconds": round(time.perf_counter() - t0, 2)}
