"""Process groups for a training run: torch.distributed (NCCL on GPUs, gloo on CPU) and megatron's TP/PP/CP grid.

One process per GPU: each rank selects the GPU of its ``LOCAL_RANK`` (set by torchrun) before NCCL starts, and
megatron's CUDA RNG tracker is seeded there (weights built on the GPU draw from it). On a machine without CUDA
the compatibility layer (:mod:`llava_ov.megatron.compat`) is applied instead and gloo carries the collectives.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from llava_ov.megatron import compat
from llava_ov.megatron.model import HAVE_TE, Parallel


def free_port() -> int:
    """A TCP port nobody listens on now (a one-process group must not collide with concurrent runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_layout(world: int, tp: int, pp: int, cp: int = 1, sequence_parallel: bool = False) -> None:
    """Refuse a layout the world cannot hold, or one this machine cannot run, with the params key to change."""
    if world % (tp * pp * cp):
        raise ValueError(f"{world} processes cannot hold TP={tp} x PP={pp} x CP={cp}: set params.yaml "
                         f"train.common.nproc (x the stage's nnodes) to a multiple of tp*pp*cp")
    if sequence_parallel and tp == 1:
        raise ValueError("train.common.sequence_parallel splits activations over tensor-parallel ranks: it needs "
                         "tp > 1")
    if cp > 1 and not HAVE_TE:
        raise ValueError(f"train.common.cp={cp}: context parallelism runs through Transformer Engine's attention, "
                         f"which is not installed here (GPU machines: pip install '.[gpu]'); use cp: 1")


def init(tp: int, pp: int, cp: int = 1, sequence_parallel: bool = False, seed: int = 0) -> Parallel:
    """Join the process group torchrun set up (or a one-process group) and build the TP × PP × CP × DP grid."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        compat.apply()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if cuda else "gloo")
    check_layout(dist.get_world_size(), tp, pp, cp, sequence_parallel)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                                 context_parallel_size=cp)
    if cuda:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    whole_group = dist.new_subgroups(group_size=1)[0] if cp > 1 else None  # collective: every rank, here
    return Parallel(tp=tp, pp=pp, pp_rank=parallel_state.get_pipeline_model_parallel_rank(), cp=cp,
                    sequence_parallel=sequence_parallel, whole_group=whole_group)


def shutdown() -> None:
    """Tear down megatron's groups and the process group (tests run several grids in one process)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
