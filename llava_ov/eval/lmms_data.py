"""Local copies of lmms-eval datasets: where a task's data is found offline, what it digests to, which items fail.

Nothing is fetched from a hub at run time. A task's evaluation split is read from, in this order:

1. the task's own local files: a task YAML whose ``dataset_path`` is a file loader (``parquet``, ``json``, ...)
   with ``dataset_kwargs.data_files`` (the format lmms-eval documents for local data);
2. ``<data_dir>/<task>/``: parquet files of the split, named ``<split>.parquet``, ``<split>-00000-of-00002.parquet``
   (the hub's layout) or kept in a ``<split>/`` sub-folder; the task then reads them instead of ``dataset_path``;
3. the Hugging Face ``datasets`` cache, read offline, as ``datasets.load_dataset`` left it: the folder lmms-eval
   itself reads (``LMMS_EVAL_DATASETS_CACHE``, else ``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``).

A task found in none of them stops with :class:`MissingDataError`, which names the task, the folder it looked in,
and both ways to populate it. The dataset digest (part of the result cache key) is computed from the bytes of the
files the split is read from, so a changed copy is never served stale results.

An image that does not decode is a counted failure of its item, found by :func:`undecodable` before lmms-eval
touches the data (lmms-eval decodes the first document while building a task, and every document while building
requests, so one broken image would otherwise stop the whole benchmark).
"""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import huggingface_hub.constants
import xxhash
from lmms_eval.api.task import _resolve_hf_datasets_cache_dir
from PIL import Image

from llava_ov.artifacts import digest_file

FILE_LOADERS = frozenset({"parquet", "json", "csv", "arrow", "text"})


class MissingDataError(FileNotFoundError):
    """A task's dataset is not available locally; the message says where it was expected and how to put it there."""


def force_offline() -> None:
    """Make ``datasets`` and ``huggingface_hub`` refuse the network in this process, whatever the environment
    said when they were imported: a missing local copy then fails at once with a clear message instead of
    retrying the hub (about 20 s per task on a machine without network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True


def eval_split(config: dict) -> str:
    """The split lmms-eval evaluates: ``test_split`` if the task sets one, else ``validation_split``."""
    split = config.get("test_split") or config.get("validation_split")
    if not split:
        raise ValueError(f"task {config.get('task')!r} names neither test_split nor validation_split")
    return split


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value or [])


def _split_files(folder: Path, split: str) -> list[Path]:
    """Parquet files of ``split`` under ``folder``: ``<split>.parquet``, ``<split>-*.parquet``, ``<split>/**``."""
    named = re.compile(rf"{re.escape(split)}([-_.].*)?$")
    return sorted(p for p in folder.rglob("*.parquet")
                  if split in p.relative_to(folder).parts[:-1] or named.match(p.stem))


@dataclass(frozen=True)
class LocalData:
    """Where one task's evaluation split is read from.

    ``source`` is ``task`` (the YAML's own data files), ``data_dir`` or ``hf_cache``; ``files`` are the files whose
    bytes are the split (for ``hf_cache``, the cache's arrow files); ``overrides`` are the task config keys that
    point lmms-eval at them (empty when the task already does)."""

    task: str
    split: str
    source: str
    files: tuple[str, ...]
    overrides: dict = field(default_factory=dict)
    load_args: dict = field(default_factory=dict)  # datasets.load_dataset(**load_args, split=split)

    def load(self) -> datasets.Dataset:
        """The evaluation split, from the local copy (offline), through the datasets cache lmms-eval uses."""
        return datasets.load_dataset(**self.load_args, split=self.split, cache_dir=_resolve_hf_datasets_cache_dir())

    def digest(self) -> str:
        """xxh3-128 over the split name and the bytes of each file (not their paths, which are this machine's)."""
        h = xxhash.xxh3_128(self.split.encode())
        for f in self.files:
            h.update(digest_file(f).encode())
        return h.hexdigest()


def _populate_hint(config: dict, folder: Path, split: str) -> str:
    hub = config.get("dataset_path")
    name = f", {config['dataset_name']!r}" if config.get("dataset_name") else ""
    return (f"populate it in one of two ways, on a machine with network access, then copy it here: (1) a parquet "
            f"folder: python -c \"import datasets; datasets.load_dataset({hub!r}{name}, split={split!r})"
            f".to_parquet('{folder}/{split}.parquet')\"; or (2) the datasets cache: run "
            f"datasets.load_dataset({hub!r}{name}) with the same HF_HOME/HF_DATASETS_CACHE and copy that cache")


def locate(task: str, config: dict, data_dir: Path | str) -> LocalData:
    """Find ``task``'s evaluation split locally (see the module docstring for the order), or raise
    :class:`MissingDataError` naming the task, the expected path and how to populate it."""
    force_offline()
    split = eval_split(config)
    kwargs = dict(config.get("dataset_kwargs") or {})
    if config.get("dataset_path") in FILE_LOADERS:
        data_files = kwargs.get("data_files")
        files = _as_list(data_files.get(split) if isinstance(data_files, dict) else data_files)
        missing = [str(f) for f in files if not Path(f).is_file()]
        if not files or missing:
            problem = f"{missing} do not exist" if missing else "none are given"
            raise MissingDataError(f"task {task}: its YAML reads local {config['dataset_path']} data_files for split "
                                   f"{split!r}, but {problem} (relative paths are read from the directory the "
                                   f"evaluation runs in)")
        return LocalData(task, split, "task", tuple(str(f) for f in files),
                         load_args={"path": config["dataset_path"], "data_files": {split: files}})
    folder = Path(data_dir) / task
    files = [str(f) for f in _split_files(folder, split)] if folder.is_dir() else []
    if files:
        return LocalData(task, split, "data_dir", tuple(files),
                         overrides={"dataset_path": "parquet", "dataset_name": None,
                                    "dataset_kwargs": {"data_files": {split: files}}},
                         load_args={"path": "parquet", "data_files": {split: files}})
    cached = {"path": config.get("dataset_path"), "name": config.get("dataset_name")}
    try:
        dataset = datasets.load_dataset(**cached, split=split, cache_dir=_resolve_hf_datasets_cache_dir())
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError or ValueError for a missing copy
        raise MissingDataError(
            f"task {task}: no local copy of its dataset {config.get('dataset_path')!r} (split {split!r}). Looked "
            f"for parquet files in {folder}/ and in the datasets cache (offline; datasets said: "
            f"{type(e).__name__}: {str(e)[:200]}). {_populate_hint(config, folder, split)}") from e
    return LocalData(task, split, "hf_cache", tuple(sorted(f["filename"] for f in dataset.cache_files)),
                     overrides={"dataset_kwargs": {k: v for k, v in kwargs.items() if k != "token"}},
                     load_args=cached)


def _holds_images(feature) -> bool:
    return isinstance(feature, datasets.Image) or isinstance(getattr(feature, "feature", None), datasets.Image)


def _decode_error(value) -> str | None:
    """Why an image value (raw dict, or a list of them) does not decode, or None if every image decodes."""
    for raw in value if isinstance(value, list) else [value]:
        if raw is None:
            continue
        try:
            with Image.open(io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"]) as im:
                im.load()
        except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
            return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")  # no addresses: same text each run
    return None


def undecodable(dataset: datasets.Dataset, workers: int = 0) -> dict[int, str]:
    """Row index → reason, for every row with an image that does not decode (full decode, in a thread pool)."""
    columns = [c for c, feature in dataset.features.items() if _holds_images(feature)]
    if not columns:
        return {}
    table = dataset.select_columns(columns).with_format("arrow")  # images as stored: {"bytes", "path"}

    def row_error(row: dict) -> str | None:
        return next((e for v in row.values() if (e := _decode_error(v))), None)

    found: dict[int, str] = {}
    start = 0
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for batch in table.iter(batch_size=64):  # bounded memory: images stay in the memory-mapped table
            rows = batch.to_pylist()
            found.update((start + i, e) for i, e in enumerate(pool.map(row_error, rows)) if e)
            start += len(rows)
    return found
