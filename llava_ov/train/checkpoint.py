"""Resumable training checkpoints with megatron's dist_checkpointing, outside the stage's artifact.

Layout: ``<root>/iter_NNNNNNN/`` (a torch_dist checkpoint: model and distributed-optimizer shards, plus the
common state: iteration, scheduler, loader position, per-step log) and ``<root>/latest`` naming the newest complete
one. ``latest`` is replaced atomically only after a save finished on every rank, and older iterations are
deleted after that, so a kill at any moment leaves a loadable checkpoint. ``<root>/identity.json`` records what
the run depends on (inputs, policy); a checkpoint of another identity is discarded, never resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

from llava_ov.artifacts import write_json
from llava_ov.megatron import compat

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}
WRITER_THREADS = 1  # torch_dist forks one writer per thread; small checkpoints gain nothing from more


def prepare(root: Path, identity: dict) -> int | None:
    """The iteration to resume from (None: start fresh). Clears checkpoints of another identity (rank 0)."""
    latest = root / "latest"
    ident = root / "identity.json"
    same = ident.is_file() and json.loads(ident.read_text()) == identity
    step = int(latest.read_text()) if same and latest.is_file() else None
    dist.barrier()
    if dist.get_rank() == 0 and not same:
        if root.exists():
            shutil.rmtree(root)
        write_json(ident, identity)
    dist.barrier()
    return step


def _dir(root: Path, step: int) -> Path:
    return root / f"iter_{step:07d}"


def _sharded(model, optimizer, is_loading: bool) -> dict:
    model_sd = model.sharded_state_dict()
    return {"model": model_sd,
            "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=SHARDING)}


def save(root: Path, step: int, model, optimizer, common: dict) -> None:
    """Save the model/optimizer shards and ``common`` state as iteration ``step``, then point ``latest`` at it."""
    target = _dir(root, step)
    if dist.get_rank() == 0:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
    dist.barrier()
    with compat.device_scope():
        dist_checkpointing.save({**_sharded(model, optimizer, False), "common": common}, str(target),
                                sharded_strategy=TorchDistSaveShardedStrategy("torch_dist", 1,
                                                                              thread_count=WRITER_THREADS))
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = root / "latest.tmp"
        tmp.write_text(str(step))
        tmp.replace(root / "latest")
        for old in root.glob("iter_*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load(root: Path, step: int, model, optimizer) -> dict:
    """Restore model and optimizer from iteration ``step``; returns its ``common`` state."""
    with compat.device_scope():
        state = dist_checkpointing.load({**_sharded(model, optimizer, True), "common": {}}, str(_dir(root, step)))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return state["common"]
