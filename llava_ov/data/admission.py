"""Each sample's fate in ``ingest``, shared by the embedded build and the released-data conversion.

A sample is kept only if it validates, passes its pool's filters and (eval pool) shares neither an image nor its
id with a training pool; then duplicates are dropped (``ingest.dedupe``) or kept under an id of their own. The
per-sample checks run in the engine's tasks (:mod:`llava_ov.data.parts`); the two that need a whole pool run on
the driver, on uint64 arrays (:mod:`llava_ov.data.assemble`), with the rule and the reasons written here.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa
import xxhash

from llava_ov.data.filters import Filters
from llava_ov.data.validate import Rejected, ValidSample, check_sample

INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("pool", pa.string()), ("source", pa.string()),
                          ("category", pa.string()), ("task", pa.string()), ("shard", pa.string()),
                          ("key", pa.string()), ("n_images", pa.int32()), ("width", pa.int32()),
                          ("height", pa.int32()), ("offset", pa.int64()), ("size", pa.int64())])
PUSHED_DOWN = ("pool", "shard")  # the index columns readers filter on (llava_ov.data.reader)
EVAL_IMAGE_IN_TRAINING = "eval image also in a training pool"
EVAL_SAMPLE_IN_TRAINING = "eval sample also in a training pool"


def derived_id(content_id: str, file: str, key: str) -> str:
    """The id of a later exact duplicate kept with ``ingest.dedupe: false``: xxh3-64 of (content id, file, key).

    The first occurrence (sorted file order) keeps the content id; ``file`` and ``key`` say where the copy was
    read, so the id is unique in its pool and the same on every run.
    """
    return xxhash.xxh3_64_hexdigest(f"{content_id}\0{file}\0{key}".encode())


def place(content_id: str, seen: set[str], dedupe: bool, file: str, key: str) -> str | None:
    """The id a validated sample is kept under: its content id if not in ``seen`` (ids already in its pool), else
    :func:`derived_id`, or None when ``dedupe`` drops it (the caller records :func:`duplicate`)."""
    if content_id not in seen:
        return content_id
    return None if dedupe else derived_id(content_id, file, key)


def duplicate(pool: str) -> str:
    """The rejection reason of an exact duplicate dropped by ``ingest.dedupe``."""
    return f"duplicate sample_id in pool {pool}"


def reason_kind(reason: str) -> str:
    """A reason up to its first " (": what ``metrics/ingest.json`` counts (``reject_reasons``)."""
    return reason.split(" (")[0]


def image_hashes(images: Iterable[bytes]) -> np.ndarray:
    return np.fromiter((xxhash.xxh3_64_intdigest(img) for img in images), dtype=np.uint64)


def admit(meta: dict, members: dict[str, bytes], filters: Filters) -> ValidSample:
    """Validate a sample and apply its pool's filters; raise :class:`Rejected` (with the sample's id once it has
    one). What needs other samples (duplicates, eval vs training) is settled later, on ids alone."""
    sample = check_sample(meta, members)
    try:
        filters.check(sample)
    except Rejected as e:
        e.sample_id = sample.sample_id
        raise
    return sample


def index_row(sample: ValidSample, sid: str, pool: str, source: str, shard: str, offset: int, size: int) -> dict:
    """The ``index.parquet`` row of a kept sample (its key in ``shard`` is its id, its bytes ``[offset, offset +
    size)`` of the shard)."""
    w, h = sample.sizes[0] if sample.sizes else (0, 0)
    return {"sample_id": sid, "pool": pool, "source": source, "category": str(sample.meta.get("category", "")),
            "task": str(sample.meta.get("task", "")), "shard": shard, "key": sid, "n_images": len(sample.images),
            "width": w, "height": h, "offset": offset, "size": size}
