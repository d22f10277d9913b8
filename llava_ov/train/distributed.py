"""Process groups for a training run: torch.distributed (NCCL on GPUs, gloo on CPU) and megatron's TP/PP grid."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from llava_ov.megatron import compat
from llava_ov.megatron.model import Parallel


def free_port() -> int:
    """A TCP port nobody listens on now (a one-process group must not collide with concurrent runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(tp: int, pp: int) -> Parallel:
    """Join the process group torchrun set up (or a one-process group) and build the TP × PP × DP grid."""
    compat.apply()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"{world} processes cannot hold TP={tp} x PP={pp}: set params.yaml train.common.nproc to a "
                         f"multiple of tp*pp")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    return Parallel(tp=tp, pp=pp, pp_rank=parallel_state.get_pipeline_model_parallel_rank())


def shutdown() -> None:
    """Tear down megatron's groups and the process group (tests run several grids in one process)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
