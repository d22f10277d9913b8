"""Training stages on a miniature project: policy, export, SIGKILL + resume, and TP=2 vs TP=1 (two gloo ranks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llava_ov.artifacts import open_artifact
from llava_ov.train.batches import IGNORE, loss_func, model_inputs, shift_labels
from llava_ov.train.policy import policy
from llava_ov.train.distributed import free_port
from tests.train_project import build, run_stage, stage_command, stage_env, train_params


def losses(root: Path, stage: str = "stage1") -> list[float]:
    rows = (root / "plots" / f"train_{stage}" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[1]) for r in rows]


def test_policy_follows_the_recipe_shape():
    p = policy("stage1", train_params(), seed=0)
    assert p.trainable == "merger" and p.warmup_steps == 1
    with pytest.raises(ValueError, match="trainable"):
        policy("stage1", train_params(trainable="vision"), 0)
    with pytest.raises(ValueError, match="unknown training stage"):
        policy("stage3", train_params(), 0)


def test_labels_are_shifted_within_rows_and_masked():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE], [7, IGNORE, 8, 9]])
    assert shift_labels(labels).tolist() == [[5, 6, IGNORE, IGNORE], [IGNORE, 8, 9, IGNORE]]
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": labels,
             "cu_seqlens": torch.tensor([0, 4, 8], dtype=torch.int32)}
    inputs = model_inputs(batch)
    assert inputs["loss_mask"].tolist() == [[True, True, False, False, False, True, True, False]]
    assert inputs["labels"].min() >= 0  # ignored positions hold a valid index, masked out of the loss
    total, count, report = loss_func(inputs["loss_mask"], torch.arange(8.0)[None])
    assert count == 4 and total == 0 + 1 + 5 + 6


def test_context_parallel_layout_pads_every_sample():
    """CP cuts each sample into 2·CP equal chunks: samples are padded to a multiple of it (here 4), labels and
    the loss mask never cover padding, cu_seqlens keep the true lengths, origin maps back to the batch."""
    from llava_ov.train.batches import cp_layout

    inputs = {"input_ids": torch.arange(1, 9)[None], "labels": torch.arange(11, 19)[None],
              "loss_mask": torch.tensor([[False, True, True, True, True, False, True, True]]),
              "cu_seqlens": torch.tensor([0, 5, 8], dtype=torch.int32)}
    out = cp_layout(inputs, 4)
    assert out["cu_seqlens_padded"].tolist() == [0, 8, 12] and out["cu_seqlens"].tolist() == [0, 5, 8]
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 0]]
    assert out["labels"].tolist() == [[11, 12, 13, 14, 15, 0, 0, 0, 16, 17, 18, 0]]
    assert out["loss_mask"].sum() == inputs["loss_mask"].sum() and not out["loss_mask"][0, [5, 6, 7, 11]].any()
    assert out["origin"].tolist() == [0, 1, 2, 3, 4, -1, -1, -1, 5, 6, 7, -1]


def test_stage_trains_merger_only_and_exports_hf_folder(tmp_path):
    root = build(tmp_path / "p")
    result = run_stage(root)
    assert result.returncode == 0, result.stderr[-3000:]
    art = open_artifact(root / "artifacts" / "train_stage1", "hf_model", 1, verify=True)
    metrics = json.loads((root / "metrics" / "train_stage1.json").read_text())
    assert metrics["steps"] == 6 and metrics["logit_max_abs_diff"] < 1e-3 and metrics["tokens_per_s"] > 0
    before = load_file(root / "artifacts" / "stage0" / "model.safetensors")
    after = load_file(art / "model.safetensors")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.startswith("visual.merger.") for k in changed)  # stage 1: merger only (release names)
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (art / name).is_file()
    assert len(losses(root)) == 6
    assert (root / "cache" / "train_stage1" / "latest").read_text() == "6"


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    """Smoke-sized: an uninterrupted run vs. one killed (SIGKILL) after its step-4 checkpoint and rerun."""
    params = dict(steps=10, trainable="all")
    straight = build(tmp_path / "straight", **params)
    assert run_stage(straight).returncode == 0
    killed = build(tmp_path / "killed", **params)
    proc = subprocess.Popen(stage_command(), cwd=killed, env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "cache" / "train_stage1" / "latest"
    deadline = time.time() + 180
    while time.time() < deadline and not (latest.is_file() and int(latest.read_text() or 0) >= 4):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage and the checkpoint writers it spawned
    proc.wait()
    assert not (killed / "artifacts" / "train_stage1").exists()
    step = int(latest.read_text())
    assert 4 <= step < 10
    result = run_stage(killed)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((killed / "metrics" / "train_stage1.json").read_text())
    assert metrics["resumed_from"] == step
    a = open_artifact(straight / "artifacts" / "train_stage1", "hf_model", 1)
    b = open_artifact(killed / "artifacts" / "train_stage1", "hf_model", 1)
    assert a.digest == b.digest  # byte-identical HF folders: same weights, same files
    assert losses(killed) == losses(straight)


def configured(root: Path, nnodes: int = 1, **common) -> Path:
    """``root``'s params.yaml with ``train.common`` keys and Stage-1's node count replaced."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["common"].update(common)
    params["train"]["nnodes"]["stage1"] = nnodes
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def trained(root: Path) -> Path:
    result = run_stage(root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "artifacts" / "train_stage1" / "model.safetensors")


@pytest.fixture(scope="module")
def tp1(tmp_path_factory) -> Path:
    """The reference: one process, 4 steps of Stage-1 training everything."""
    return trained(build(tmp_path_factory.mktemp("tp1"), trainable="all", steps=4))


def assert_same_training(a: Path, b: Path, loss_tol: float, weight_tol: float) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 4
    assert max(abs(x - y) for x, y in zip(la, lb)) <= loss_tol, (la, lb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= weight_tol


def test_tp2_matches_tp1_loss_curve(tmp_path, tp1):
    """TENSOR PARALLEL (2 gloo processes via torchrun) vs TP=1: same loss curve and weights within tolerance.

    Covers the TP-split layers, the vocab padding (128·TP differs between the runs and must not change the loss)
    and the TP-partial gradients (QK-norm, the ViT's CLS rotary angle). About 40-60 s on 2 cores.
    """
    two = trained(configured(build(tmp_path / "tp2", trainable="all", steps=4), nproc=2, tp=2))
    assert json.loads((two / "metrics" / "train_stage1.json").read_text())["world_size"] == 2
    assert losses(tp1)[-1] < losses(tp1)[0]
    assert_same_training(tp1, two, loss_tol=1e-3, weight_tol=1e-4)


def test_tp2_with_sequence_parallel_matches_tp1(tmp_path, tp1):
    """SEQUENCE PARALLEL over TP=2: the LM's norms and residual stream hold half the packed tokens per rank (the
    local spec's torch norms, their weight grads summed over TP), image features are scattered into the sliced
    sequence and the loss rows are picked from the gathered one. Same losses and weights as TP=1."""
    sp = trained(configured(build(tmp_path / "sp", trainable="all", steps=4), nproc=2, tp=2,
                            sequence_parallel=True))
    assert_same_training(tp1, sp, loss_tol=1e-3, weight_tol=1e-4)


@pytest.fixture(scope="module")
def dp2(tmp_path_factory) -> Path:
    """One torchrun agent with two data-parallel processes."""
    return trained(configured(build(tmp_path_factory.mktemp("dp2"), trainable="all", steps=4), nproc=2))


def test_two_torchrun_agents_train_like_one_agent_with_two_processes(tmp_path, dp2):
    """MULTI-NODE: two nodes of one process each (two torchrun agents, c10d rendezvous on 127.0.0.1, started the
    way every node is: ``python -m stages.train`` with MASTER_ADDR/MASTER_PORT/NODE_RANK) give the losses and
    the final weights of one agent with two processes."""
    root = configured(build(tmp_path / "nodes", trainable="all", steps=4), nnodes=2, nproc=1)
    port = str(free_port())
    agents = [subprocess.Popen(stage_command(), cwd=root,
                               env={**stage_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                    "NODE_RANK": str(node), "LLAVA_OV_RDZV_ID": "test-two-agents"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for node in range(2)]
    outputs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "--nnodes=2" in outputs[0] and "--rdzv-endpoint=127.0.0.1:" + port in outputs[0]
    metrics = json.loads((root / "metrics" / "train_stage1.json").read_text())
    assert metrics["world_size"] == 2
    assert losses(root) == losses(dp2)
    assert_same_training(dp2, root, loss_tol=0.0, weight_tol=0.0)


def test_overlapped_grad_reduce_and_param_gather_train_like_plain(tmp_path, dp2):
    """DP=2 with the reduce-scatter of grads overlapped with backward and the param all-gather with the next
    forward (hooks; synced before checkpoints and export): same losses and weights."""
    root = trained(configured(build(tmp_path / "overlap", trainable="all", steps=4), nproc=2,
                              overlap_grad_reduce=True, overlap_param_gather=True))
    assert_same_training(dp2, root, loss_tol=1e-6, weight_tol=1e-6)


def test_gpu_benchmark_runs_at_the_tiny_shape_on_cpu():
    """benchmarks/bench_train_gpu.py --tiny: the GPU benchmark's code path (megatron model, DDP + distributed
    optimizer through the trainer's prepare/train_step, synthetic packs with images, FLOP count, attention
    kernels) executes and prints its table."""
    result = subprocess.run([sys.executable, "benchmarks/bench_train_gpu.py", "--tiny", "--steps", "2", "--warmup",
                             "1"], cwd=Path(__file__).resolve().parents[1], env=stage_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    header, rule, row = result.stdout.strip().splitlines()[-3:]
    assert header.startswith("| step s | tokens/s | model TFLOP/s | MFU |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[0]) > 0 and float(cells[1].replace(",", "")) > 0 and cells[-1].endswith("x")
