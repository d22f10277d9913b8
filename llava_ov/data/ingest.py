"""The ``ingest`` stage's library: build the embedded corpora (released datasets: :mod:`llava_ov.data.released`).

Both modes push every sample through :func:`llava_ov.data.admission.admit` and account for it exactly once in a
:class:`~llava_ov.data.admission.Ledger`: kept (written to a pool's shards and ``index.parquet``) or rejected
(``rejects.jsonl`` with a reason).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import xxhash
from tqdm import tqdm

from llava_ov.data.admission import Ledger, TrainingSet, admit, duplicate, image_hashes, index_row, place
from llava_ov.data.filters import Filters
from llava_ov.data.shards import ShardWriter, encode_meta, messages_text, sample_id
from llava_ov.data.sources import POOLS, Candidate, digits, easyvqa, emoji, rendered
from llava_ov.data.validate import Rejected

GENERATORS: dict[str, Callable[[dict[str, int], np.random.Generator], Iterator[Candidate]]] = {
    "emoji": emoji.generate,
    "easyvqa": easyvqa.generate,
    "digits": digits.generate,
    **{name: rendered.make_generator(name) for name in rendered.RENDERERS},
}
ARTIFACT = "artifacts/ingest"


def _meta(c: Candidate, sid: str) -> dict:
    return {"id": sid, "source": c.source, "category": c.category, "messages": c.messages, **c.extra}


def _source_rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, xxhash.xxh3_64_intdigest(source.encode())])


def build_embedded(cfg: dict, seed: int, out: Path) -> dict:
    """Generate every source's candidates, validate them, and write the four pools into ``out``.

    The eval pool is written last, checked against every training pool (no shared image, no shared sample).
    """
    t0 = time.perf_counter()
    ledger = Ledger()
    writers = {pool: ShardWriter(out / pool, pool, cfg.get("shard_max_bytes", 1 << 30)) for pool in POOLS}
    filters = {pool: Filters.from_params((cfg.get("filters") or {}).get(pool)) for pool in POOLS}
    dedupe = cfg.get("dedupe", True)
    held_back: list[tuple[int, Candidate]] = []
    training_images: list[np.ndarray] = []
    unknown = sorted(set(cfg["sources"]) - set(GENERATORS))
    if unknown:
        raise ValueError(f"params.yaml ingest.sources names unknown source(s) {unknown}; known: {sorted(GENERATORS)}")
    total = sum(sum(sizes.values()) for sizes in cfg["sources"].values())
    with tqdm(total=total, desc="ingest", unit="sample", mininterval=1.0) as bar:
        for source in sorted(cfg["sources"]):
            for n, cand in enumerate(GENERATORS[source](cfg["sources"][source], _source_rng(seed, source))):
                bar.update()
                if cand.pool == "eval":
                    held_back.append((n, cand))  # written last: must be disjoint from every training pool
                    continue
                images = _admit(ledger, writers[cand.pool], cand, str(n), filters[cand.pool], dedupe, None)
                training_images.append(images)
        training = ledger.training_set(training_images)
        for n, cand in held_back:
            _admit(ledger, writers["eval"], cand, str(n), filters["eval"], dedupe, training)
    for w in writers.values():
        w.close()
    return ledger.write(out, time.perf_counter() - t0)


def _admit(ledger: Ledger, writer: ShardWriter, cand: Candidate, key: str, filters: Filters, dedupe: bool,
           training: TrainingSet | None) -> np.ndarray:
    """Keep or reject one candidate (``key``: its ordinal in its source, for a duplicate's own id); returns the
    digests of the images it kept (none if rejected)."""
    pool, content = cand.pool, sample_id(cand.images, messages_text(cand.messages))
    members = {f"{i}.png": img for i, img in enumerate(cand.images)}
    try:
        sample = admit(_meta(cand, content), members, filters, training)
    except Rejected as e:
        ledger.reject(content, pool, cand.source, str(e))
        return image_hashes([])
    sid = place(content, ledger.ids[pool], dedupe, cand.source, key)
    if sid is None:
        ledger.reject(content, pool, cand.source, duplicate(pool))
        return image_hashes([])
    shard = writer.write(sid, {"json": encode_meta(_meta(cand, sid)), **members})
    ledger.keep(index_row(sample, sid, pool, cand.source, f"{writer.prefix}/{shard}"))
    return image_hashes(sample.images)
