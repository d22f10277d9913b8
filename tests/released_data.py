"""Files in the published data formats, written the way the published conversion scripts write them.

The webdataset formats go through the ``webdataset`` package's own ``ShardWriter`` (sample dicts with ``__key__``
and one entry per member, as in ``convert_llava_pretrain_to_wds.py``, ``convert_to_webdataset.py`` and
``4_convert_packedsample_to_wds.py``); the Mid-Training-85M parquet has an HF-Image-shaped struct column
(``bytes``, ``path``), several row groups, in a nested folder. Facts: ``reference/recipe.md``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image(seed: int = 0, size: tuple[int, int] = (48, 40), fmt: str = "JPEG", black: bool = False) -> bytes:
    """A small noisy image (width, height), or an all-black one."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8) if black else np.random.default_rng(seed).integers(0, 256, (h, w, 3),
                                                                                             dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def wds_shard(folder: Path, samples: list[dict], pattern: str = "pretrain-%d.tar") -> Path:
    """Samples (``__key__`` + members; a list/dict ``json`` is dumped as the scripts do) through wds.ShardWriter."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / pattern), maxcount=10000, verbose=0) as sink:
        for sample in samples:
            sink.write({k: json.dumps(v, ensure_ascii=False).encode("utf-8") if k == "json" else v
                        for k, v in sample.items()})
    return folder / (pattern % 0)


def llava(key: str, question: str, answer: str, jpg: bytes, system: str | None = None) -> dict:
    """LLaVA-558K (convert_llava_pretrain_to_wds.py): ``jpg`` + the ``conversations`` list."""
    turns = ([{"from": "system", "value": system}] if system else []) + [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"__key__": key, "jpg": jpg, "json": turns}


def messages(key: str, turns: list[dict], jpg: bytes) -> dict:
    """Instruct, ``convert_to_webdataset.py --media image``: ``jpg`` + the bare messages list; '.' in ids -> '_'."""
    return {"__key__": key.replace(".", "_"), "jpg": jpg, "json": turns}


def mix(index: int, turns: list[dict], media: str = "image", files: dict[str, bytes] | None = None) -> dict:
    """``convert_to_webdataset.py --media mix``: members ``<i>_<basename>``, json ``{texts, media, name}``."""
    if media == "text":
        return {"__key__": f"text_{index}", "json": {"texts": turns, "media": "text"}}
    named = {f"{i}_{Path(path).name}": data for i, (path, data) in enumerate((files or {}).items())}
    return {"__key__": f"{media}_{index}", **named, "json": {"texts": turns, "media": media, "name": list(named)}}


def packed(index: int, images: list[bytes], captions: list, prompts: list[str]) -> dict:
    """A Mid-Training quick-start pre-packed group (4_convert_packedsample_to_wds.py, caption_pack mode)."""
    sample = {"__key__": f"ps_{index:08d}", **{f"img{i}.jpg": data for i, data in enumerate(images)}}
    sample["json"] = {"prompts": prompts, "captions": captions, "images": [f"/src/{index}_{i}.jpg"
                                                                           for i in range(len(images))]}
    return sample


def parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    """Mid-Training-85M: columns ``id``, ``image`` (HF Image struct, or None), ``caption``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [r["id"] for r in rows],
                      "image": pa.array([None if r["image"] is None else {"bytes": r["image"], "path": r["path"]}
                                         for r in rows], type=HF_IMAGE),
                      "caption": [r["caption"] for r in rows]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def caption(i: int) -> str:
    """A caption long enough for the published filters (50-3,500 characters)."""
    return f"A photograph of colourful noise, sample number {i}, with no discernible subject at all."
