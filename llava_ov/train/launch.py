"""How a training stage starts its processes: in place, torchrun on one node, torchrun agents on many, or Slurm.

One torchrun agent per node starts ``nproc`` processes there; agents meet through a c10d rendezvous. Where the
layout comes from:

- ``params.yaml``: ``train.common.nproc`` (processes per node) and ``train.nnodes.<stage>`` (nodes); they set the
  data-parallel size and so the global batch, which is why they are params (DVC reruns the stage when they change).
- the environment, outside Slurm, for a run over several nodes: the rendezvous endpoint
  ``MASTER_ADDR``/``MASTER_PORT``, this node's ``NODE_RANK`` (optional under c10d) and a job id
  ``LLAVA_OV_RDZV_ID`` shared by the agents; start ``python -m stages.train STAGE`` on every node.
- Slurm, when ``SLURM_JOB_ID`` is set and the stage needs more than one node: the stage (run once, e.g. by
  ``dvc repro`` in the batch script) calls ``srun`` with one task per node; each task is this module again
  (marked by :data:`AGENT_ENV`, which carries the rendezvous endpoint: the allocation's first host from
  ``scontrol show hostnames``), and it execs one torchrun agent with ``--nnodes`` from ``SLURM_JOB_NUM_NODES``
  (which must equal the stage's ``nnodes``), ``--node-rank`` from ``SLURM_NODEID`` and ``--rdzv-id`` from the
  job id.

Everything here is a pure function of (stage, layout, environment) → argv, so tests check the command lines.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

AGENT_ENV = "LLAVA_OV_RDZV_ENDPOINT"  # set by srun for its tasks: "host:port" of the rendezvous
DEFAULT_PORT = 29500
STAGE_MODULE = "stages.train"


@dataclass(frozen=True)
class Layout:
    """Processes per node and nodes of one stage (from params)."""

    nproc: int
    nnodes: int = 1

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError(f"train: nproc ({self.nproc}) and nnodes ({self.nnodes}) must be >= 1")


def hostnames(nodelist: str) -> list[str]:
    """Slurm's compressed node list (``node[001-004,010]``) expanded by Slurm's own ``scontrol``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                             text=True).stdout
    except FileNotFoundError as e:
        raise RuntimeError("SLURM_JOB_ID is set but scontrol is not on PATH: run inside a Slurm allocation on a "
                           "node with the Slurm client tools") from e
    hosts = out.split()
    if not hosts:
        raise RuntimeError(f"scontrol show hostnames {nodelist!r} listed no host")
    return hosts


def torchrun(stage: str, layout: Layout, *, endpoint: str | None = None, node_rank: int | None = None,
             rdzv_id: str | None = None, argv: Sequence[str] = ()) -> list[str]:
    """The torchrun agent of this node: standalone on one node, a c10d rendezvous at ``endpoint`` otherwise."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if layout.nnodes == 1:
        cmd += ["--standalone", f"--nproc-per-node={layout.nproc}"]
    else:
        if not endpoint:
            raise ValueError(f"train@{stage} runs on {layout.nnodes} nodes: set MASTER_ADDR (and MASTER_PORT) to "
                             f"the rendezvous host on every node, or run under Slurm")
        cmd += [f"--nnodes={layout.nnodes}", f"--nproc-per-node={layout.nproc}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id or 'llava-ov-' + stage}"]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    return cmd + ["-m", STAGE_MODULE, *(argv or [stage])]


def srun(stage: str, layout: Layout, env: Mapping[str, str], argv: Sequence[str] = ()) -> list[str]:
    """From a Slurm batch step: one task per node, each of which becomes that node's torchrun agent."""
    allocated = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 0)
    if allocated != layout.nnodes:
        raise ValueError(f"train@{stage} is set to run on {layout.nnodes} node(s) (params.yaml train.nnodes.{stage}) "
                         f"but Slurm job {env.get('SLURM_JOB_ID')} has {allocated}: allocate exactly that many "
                         f"(sbatch --nodes={layout.nnodes}) or change the param")
    head = hostnames(env["SLURM_JOB_NODELIST"])[0]
    endpoint = f"{head}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    return ["srun", f"--nodes={layout.nnodes}", f"--ntasks={layout.nnodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", f"--export=ALL,{AGENT_ENV}={endpoint}", sys.executable, "-m", STAGE_MODULE,
            *(argv or [stage])]


def agent(stage: str, layout: Layout, env: Mapping[str, str], argv: Sequence[str] = ()) -> list[str]:
    """Inside one srun task: this node's torchrun agent, its place taken from Slurm's variables."""
    nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"))
    if nnodes != layout.nnodes:
        raise ValueError(f"srun task of job {env.get('SLURM_JOB_ID')} sees {nnodes} nodes, train@{stage} expects "
                         f"{layout.nnodes}")
    return torchrun(stage, layout, endpoint=env[AGENT_ENV], node_rank=int(env["SLURM_NODEID"]),
                    rdzv_id=f"slurm-{env['SLURM_JOB_ID']}", argv=argv)


def command(stage: str, layout: Layout, env: Mapping[str, str], argv: Sequence[str] = ()) -> list[str] | None:
    """What ``python -m stages.train STAGE [ARGS]`` runs to start its processes here (every process it starts runs
    the stage module with the same ``argv``, default ``[STAGE]``); None: train in this process."""
    if "LOCAL_RANK" in env:  # a worker that torchrun started
        return None
    if AGENT_ENV in env:
        return agent(stage, layout, env, argv)
    if layout.nnodes > 1 and "SLURM_JOB_ID" in env:
        return srun(stage, layout, env, argv)
    if layout.nnodes == 1 and layout.nproc == 1:  # one process needs no launcher: it forms a one-rank group
        return None
    endpoint = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT') or DEFAULT_PORT}" if env.get("MASTER_ADDR") else None
    node_rank = int(env["NODE_RANK"]) if env.get("NODE_RANK") else None
    return torchrun(stage, layout, endpoint=endpoint, node_rank=node_rank, rdzv_id=env.get("LLAVA_OV_RDZV_ID"),
                    argv=argv)


def render(cmd: list[str]) -> str:
    """A command line as a shell would read it (for logs and ``--dry-run``)."""
    return shlex.join(cmd)
