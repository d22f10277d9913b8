"""Checkpoint weights on disk: the released layout, sharded safetensors, and strict loading.

Released LLaVA-OV-1.5 folders (and the published code's ``save_pretrained``) store the legacy names
``visual.*`` / ``model.layers.*`` / ``model.embed_tokens`` / ``model.norm`` / ``lm_head``, while the model in
memory names its modules ``model.visual.*`` / ``model.language_model.*`` / ``lm_head``. One renaming table maps
between them (the published class's ``_checkpoint_conversion_mapping``); it is idempotent on in-memory names, so
folders in either layout read the same. Weights are written in the release layout, sharded with
``model.safetensors.index.json`` past ``max_shard_size``, so the published code and tools built on it load them.

Loading is strict: a missing, unexpected, duplicated or mis-shaped tensor is an error naming the folder and the
keys. Nothing is ever left randomly initialised, and only safetensors are read (never a pickle). A training rank
that holds a tensor-/pipeline-parallel shard reads only its rows or columns (:meth:`WeightFiles.slices`,
safetensors' ``get_slice``), never the whole checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"

# (on-disk pattern, in-memory replacement): the published class's _checkpoint_conversion_mapping
RELEASE_TO_MEMORY = ((re.compile(r"^visual\."), "model.visual."),
                     (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."))
MEMORY_TO_RELEASE = ((re.compile(r"^model\.visual\."), "visual."),
                     (re.compile(r"^model\.language_model\."), "model."))


class WeightsError(ValueError):
    """A checkpoint folder's tensors do not fit the model: the message names the folder and the keys."""


def _rename(key: str, table: tuple[tuple[re.Pattern, str], ...]) -> str:
    for pattern, repl in table:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def memory_name(stored: str) -> str:
    """In-memory name of a tensor stored under ``stored`` (release or in-memory layout)."""
    return _rename(stored, RELEASE_TO_MEMORY)


def release_name(name: str) -> str:
    """On-disk (released) name of the in-memory tensor ``name``."""
    return _rename(name, MEMORY_TO_RELEASE)


@dataclass(frozen=True)
class WeightFiles:
    """Where each tensor of a checkpoint folder lives: in-memory name → (safetensors file, stored key)."""

    folder: Path
    locations: Mapping[str, tuple[str, str]]

    @classmethod
    def open(cls, folder: Path | str) -> "WeightFiles":
        """Index a folder's ``model.safetensors.index.json`` or single ``model.safetensors`` (never a pickle)."""
        folder = Path(folder)
        if (folder / INDEX_FILE).is_file():
            try:
                weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise WeightsError(f"{folder / INDEX_FILE} is not a safetensors index (no 'weight_map'): {e}") from e
            missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
            if missing:
                raise WeightsError(f"{folder}: {INDEX_FILE} names shard(s) {missing} that are not in the folder; "
                                   f"copy the complete checkpoint")
        elif (folder / SINGLE_FILE).is_file():
            with safe_open(folder / SINGLE_FILE, framework="pt") as f:
                weight_map = {key: SINGLE_FILE for key in f.keys()}
        else:
            found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
            hint = f" (found {found[:3]}: pickled weights are never loaded; convert them to safetensors)" if found else ""
            raise WeightsError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")
        locations: dict[str, tuple[str, str]] = {}
        for stored in sorted(weight_map):
            name = memory_name(stored)
            if name in locations:
                raise WeightsError(f"{folder}: tensor {name!r} is stored twice, as {locations[name][1]!r} and "
                                   f"{stored!r}; a folder holds one layout")
            locations[name] = (weight_map[stored], stored)
        return cls(folder, locations)

    def names(self) -> list[str]:
        return sorted(self.locations)

    def read(self, names: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (all by default) under their in-memory names, opening each shard once."""
        wanted = self.names() if names is None else sorted(names)
        unknown = [n for n in wanted if n not in self.locations]
        if unknown:
            raise WeightsError(f"{self.folder} has no tensor(s) {unknown[:5]}")
        with self.slices() as read:
            out = {name: read(name) for name in sorted(wanted, key=lambda n: self.locations[n][0])}
        return out if dtype is None else {k: v.to(dtype) for k, v in out.items()}

    @contextlib.contextmanager
    def slices(self) -> Iterator["SliceReader"]:
        """A :class:`SliceReader` over this folder's files, each opened once and closed on exit."""
        with contextlib.ExitStack() as stack:
            yield SliceReader(self, stack)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, read from the safetensors headers (no tensor data is read)."""
        out = {}
        for file in sorted({f for f, _ in self.locations.values()}):
            with safe_open(self.folder / file, framework="pt") as f:
                for name, (where, stored) in self.locations.items():
                    if where == file:
                        out[name] = tuple(f.get_slice(stored).get_shape())
        return out


class SliceReader:
    """Reads whole tensors, or a range of one dimension of a tensor, without reading the rest of the file.

    ``reader(name)`` is the tensor; ``reader(name, dim, start, stop)`` is ``tensor.narrow(dim, start, stop -
    start)`` read through safetensors' ``get_slice`` (only the bytes of the range are copied out of the memory
    map). ``bytes_read`` counts the bytes of every tensor returned, so a caller can check what a rank read.
    """

    def __init__(self, files: WeightFiles, stack: contextlib.ExitStack) -> None:
        self.files, self._stack, self._handles = files, stack, {}
        self.bytes_read = 0

    def _open(self, name: str):
        """(open safetensors file, stored key) of tensor ``name``."""
        try:
            file, stored = self.files.locations[name]
        except KeyError:
            raise WeightsError(f"{self.files.folder} has no tensor {name!r}") from None
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(safe_open(self.files.folder / file, framework="pt"))
        return self._handles[file], stored

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor ``name`` (from the file header: no data is read)."""
        handle, stored = self._open(name)
        return tuple(handle.get_slice(stored).get_shape())

    def __call__(self, name: str, dim: int = 0, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        handle, stored = self._open(name)
        if start is None:
            tensor = handle.get_tensor(stored)
        else:
            tensor = handle.get_slice(stored)[(slice(None),) * dim + (slice(start, stop),)]
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor


def check_tensors(folder: Path | str, found: Mapping[str, tuple[int, ...]],
                  expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`WeightsError` unless ``found`` has exactly the ``expected`` names and shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{k}: {tuple(found[k])} in the folder, {tuple(expected[k])} in the model"
                        for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        def listed(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        raise WeightsError(f"checkpoint {folder} does not fit the model of its config.json: missing "
                           f"{listed(missing)}, unexpected {listed(unexpected)}, mis-shaped {listed(mismatched)}. "
                           f"Nothing was loaded; a folder must hold every tensor of the model under its released "
                           f"(visual.*, model.layers.*, lm_head) or in-memory (model.visual.*, "
                           f"model.language_model.*) name, with the shapes its config.json gives")


def save_weights(state: Mapping[str, torch.Tensor], folder: Path | str,
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> None:
    """Write in-memory-named tensors in the release layout: ``model.safetensors``, or shards + index past the size."""
    released = {release_name(k): v.detach().contiguous() for k, v in state.items()}
    if len(released) != len(state):
        raise WeightsError("two in-memory tensors map to the same released name")
    save_torch_state_dict(released, Path(folder), max_shard_size=max_shard_size, metadata={"format": "pt"})
