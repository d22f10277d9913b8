"""Packed batches for training: micro-batches of several packs, deterministic and resumable.

Each micro-batch stacks ``micro_batch`` packs into ``[B, capacity]`` tensors (trailing padding), with labels on
assistant tokens only, position ids restarting in every sample, ``cu_seqlens`` over the flattened batch (trailing
padding of each pack is its own segment), and every image's patches and grid. The order of packs is a seeded
permutation per epoch; ``state_dict()`` records the plan digest and position, and resuming on another plan fails.
Packs are read one by one by their byte extent (``packs.parquet``), never a whole artifact.

Data-parallel training reads the one global stream of micro-batches through :meth:`PackedLoader.take`: every rank
advances over the same micro-batches (so their positions, and the checkpointed state, agree), but reads and
collates only its own (micro-batch ``i`` of a step belongs to rank ``i % world``), so no rank reads another rank's
packs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from llava_ov.artifacts import Artifact
from llava_ov.data.shards import read_sample_at
from llava_ov.vision.image_processing import ImageProcessor

IGNORE = -100


@dataclass(frozen=True)
class PackIndex:
    """Where every pack of an artifact is: its shard (an index into ``shards``) and byte extent, as numpy columns."""

    shards: list[Path]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    @classmethod
    def of(cls, art: Artifact) -> "PackIndex":
        table = pq.read_table(art / "packs.parquet", columns=["shard", "offset", "size"])
        names = table["shard"].dictionary_encode().combine_chunks()
        return cls([art / "shards" / f"{n}.tar" for n in names.dictionary.to_pylist()],
                   names.indices.to_numpy(), table["offset"].to_numpy(), table["size"].to_numpy())

    def __len__(self) -> int:
        return len(self.offset)

    def read(self, i: int) -> dict[str, bytes]:
        return read_sample_at(self.shards[self.shard[i]], int(self.offset[i]), int(self.size[i])).files


def collate(packs: list[dict[str, bytes]], capacity: int, pad_id: int, processor: ImageProcessor) -> dict:
    """Stack packed samples into one micro-batch (see module docstring)."""
    b = len(packs)
    input_ids = torch.full((b, capacity), pad_id, dtype=torch.long)
    labels = torch.full((b, capacity), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((b, capacity), dtype=torch.long)
    bounds, pixels, grids, sample_ids = [0], [], [], []
    for row, files in enumerate(packs):
        meta = json.loads(files["json"])
        ids = torch.from_numpy(np.load(io.BytesIO(files["input_ids.npy"])).astype(np.int64))
        mask = torch.from_numpy(np.load(io.BytesIO(files["loss_mask.npy"])).astype(bool))
        n = len(ids)
        input_ids[row, :n] = ids
        labels[row, :n] = torch.where(mask, ids, IGNORE)
        offset = 0
        for length in meta["lengths"]:
            position_ids[row, offset:offset + length] = torch.arange(length)
            offset += length
            bounds.append(row * capacity + offset)
        if offset < capacity:  # trailing padding: its own segment, never trained on
            position_ids[row, offset:] = torch.arange(capacity - offset)
            bounds.append((row + 1) * capacity)
        for i in range(len(meta["grids"])):
            pv, grid = processor(files[f"{i}.png"])
            pixels.append(torch.from_numpy(pv))
            grids.append(grid)
        sample_ids.append(meta["sample_ids"])
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
             "cu_seqlens": torch.tensor(bounds, dtype=torch.int32), "sample_ids": sample_ids}
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
        batch["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    return batch


class PackedLoader:
    """Iterates micro-batches of a pack artifact forever (epoch after epoch), resumable by ``state_dict``.

    Memory is a few numpy columns per pack (:class:`PackIndex`) plus the micro-batches being collated.
    """

    def __init__(self, art: Artifact, micro_batch: int, pad_id: int, processor: ImageProcessor,
                 seed: int = 0) -> None:
        self.art, self.micro_batch, self.pad_id, self.processor, self.seed = art, micro_batch, pad_id, processor, seed
        self.capacity = int(art.meta["stats"]["capacity"])
        self.packs = PackIndex.of(art)
        if not len(self.packs):
            raise ValueError(f"pack artifact {art.path} has no packs")
        self.epoch, self.position = 0, 0
        self._permutation: tuple[int, np.ndarray | None] = (-1, None)

    def _order(self, epoch: int) -> np.ndarray:
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.packs)))
        return self._permutation[1]

    def state_dict(self) -> dict:
        return {"plan_digest": self.art.meta["stats"]["plan_digest"], "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        mine = self.art.meta["stats"]["plan_digest"]
        if state["plan_digest"] != mine:
            raise ValueError(f"loader state is for plan {state['plan_digest']}, but {self.art.path} holds plan {mine}:"
                             f" the data changed since the checkpoint; start the stage from scratch (delete its "
                             f"checkpoints) instead of resuming")
        self.epoch, self.position = state["epoch"], state["position"]

    def batch(self, indices: np.ndarray) -> dict:
        """One micro-batch of the given packs (by their index in the plan)."""
        return collate([self.packs.read(int(i)) for i in indices], self.capacity, self.pad_id, self.processor)

    def take(self, count: int, rank: int = 0, world: int = 1) -> list[dict]:
        """The next ``count`` micro-batches of the stream, of which this ``rank`` (of ``world`` data-parallel
        ranks) reads, collates and returns those with ``i % world == rank``; the position advances past all."""
        out = []
        for i in range(count):
            if self.position + self.micro_batch > len(self.packs):
                self.epoch, self.position = self.epoch + 1, 0
            if i % world == rank:
                out.append(self.batch(self._order(self.epoch)[self.position:self.position + self.micro_batch]))
            self.position += self.micro_batch
        return out

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.take(1)[0]
