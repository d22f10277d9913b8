"""How a training stage starts its processes: command lines from params and the environment (Slurm included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llava_ov.train.launch import AGENT_ENV, Layout, command, hostnames
from tests.project import REPO

HOSTS = [f"gpu-a{i:02d}" for i in range(7, 23)]  # what `scontrol show hostnames gpu-a[07-22]` prints
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "16", "SLURM_JOB_NODELIST": "gpu-a[07-22]"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture()
def scontrol(tmp_path, monkeypatch) -> Path:
    """A stand-in for Slurm's scontrol on PATH that expands only the test's node list (and logs its calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                      f"[ \"$1 $2 $3\" = \"show hostnames gpu-a[07-22]\" ] || exit 1\n"
                      f"printf '%s\\n' {' '.join(HOSTS)}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_one_process_trains_in_place_and_a_worker_never_relaunches():
    assert command("stage1", Layout(nproc=1), {}) is None
    assert command("stage1", Layout(nproc=8, nnodes=16), {"LOCAL_RANK": "3", **SLURM}) is None


def test_one_node_is_a_standalone_torchrun_even_under_slurm():
    expected = [*TORCHRUN, "--standalone", "--nproc-per-node=8", "-m", "stages.train", "stage2"]
    assert command("stage2", Layout(nproc=8), {}) == expected
    assert command("stage2", Layout(nproc=8), {**SLURM, "SLURM_JOB_NUM_NODES": "1"}) == expected


def test_nodes_outside_slurm_meet_at_the_rendezvous_from_the_environment():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400", "NODE_RANK": "1", "LLAVA_OV_RDZV_ID": "run7"}
    assert command("stage1", Layout(nproc=4, nnodes=2), env) == [
        *TORCHRUN, "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400",
        "--rdzv-id=run7", "--node-rank=1", "-m", "stages.train", "stage1"]
    with pytest.raises(ValueError, match="set MASTER_ADDR"):
        command("stage1", Layout(nproc=4, nnodes=2), {})


def test_slurm_batch_step_starts_one_agent_per_node_with_srun(scontrol):
    cmd = command("stage1_5", Layout(nproc=8, nnodes=16), SLURM)
    assert cmd == ["srun", "--nodes=16", "--ntasks=16", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                   f"--export=ALL,{AGENT_ENV}=gpu-a07:29500", sys.executable, "-m", "stages.train", "stage1_5"]
    assert scontrol.read_text().split() == ["show", "hostnames", "gpu-a[07-22]"]  # the list is Slurm's to expand
    with_port = command("stage1_5", Layout(nproc=8, nnodes=16), {**SLURM, "MASTER_PORT": "31000"})
    assert f"--export=ALL,{AGENT_ENV}=gpu-a07:31000" in with_port


def test_each_srun_task_is_a_torchrun_agent_placed_by_slurm():
    env = {**SLURM, AGENT_ENV: "gpu-a07:29500", "SLURM_NODEID": "3", "SLURM_PROCID": "3"}
    assert command("stage1_5", Layout(nproc=8, nnodes=16), env) == [
        *TORCHRUN, "--nnodes=16", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-a07:29500",
        "--rdzv-id=slurm-4242", "--node-rank=3", "-m", "stages.train", "stage1_5"]


def test_slurm_allocation_must_match_the_stage(scontrol):
    with pytest.raises(ValueError, match=r"train.nnodes.stage1_5.*has 8.*--nodes=16"):
        command("stage1_5", Layout(nproc=8, nnodes=16), {**SLURM, "SLURM_JOB_NUM_NODES": "8"})


def test_without_scontrol_the_error_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="scontrol is not on PATH"):
        hostnames("gpu-a[07-22]")


def test_stage_dry_run_prints_the_launch_for_this_environment(tmp_path, scontrol):
    """`python -m stages.train STAGE --dry-run` in a project on the 8b layout, inside a 16-node Slurm job."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["common"]["nproc"] = 8
    params["train"]["nnodes"]["stage1_5"] = 16
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, **SLURM, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "stages.train", "stage1_5", "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("srun --nodes=16 --ntasks=16 --ntasks-per-node=1") and "-m stages.train stage1_5" in out
