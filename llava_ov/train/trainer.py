"""One training stage on megatron-core: HF checkpoint in, trained megatron model out (exported by the caller).

Every rank (torchrun) runs :func:`train`: it converts the stage's starting HF checkpoint into its own TP/PP shard,
gates the conversion on a logit check (megatron forward vs HF forward on the first packed micro-batch), freezes
what the policy does not train, wraps the model in megatron's DDP with the distributed optimizer, and steps
through packed micro-batches with megatron's forward/backward schedule (per-token loss over assistant tokens,
cosine schedule with warmup, gradient clipping). Checkpoints go to ``run.checkpoints`` every ``save_every`` steps
and a rerun resumes from the newest; a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from tqdm import tqdm
from transformers import AutoTokenizer

from llava_ov.artifacts import Artifact
from llava_ov.megatron import compat
from llava_ov.megatron.convert import hf_to_megatron, padded_vocab
from llava_ov.megatron.model import LlavaOVMegatron, Parallel
from llava_ov.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration
from llava_ov.model.modeling import load_state
from llava_ov.packing.loader import PackedLoader
from llava_ov.text.tokenizer import special_ids
from llava_ov.train import checkpoint
from llava_ov.train.batches import forward_step, model_inputs
from llava_ov.train.distributed import init
from llava_ov.train.policy import Policy, is_trainable
from llava_ov.vision.image_processing import ImageProcessor


CHECK_PACKS = 2  # the logit check's fixed batch: the first two packs of the plan (two rows, many samples)


@dataclass(frozen=True)
class Run:
    """How a stage runs (not what it learns): parallel layout, threads, checkpoint cadence and places."""

    tp: int
    pp: int
    threads: int
    save_every: int
    logit_tolerance: float
    checkpoints: Path
    live_dir: Path | None


@dataclass
class Result:
    model: LlavaOVMegatron
    hf_config: LlavaOV15Config
    parallel: Parallel
    metrics: dict


def _gathered(output: torch.Tensor) -> torch.Tensor:
    return gather_from_tensor_model_parallel_region(output) if parallel_state.get_tensor_model_parallel_world_size() > 1 \
        else output


def logit_check(model: LlavaOVMegatron, hf_dir: Path, batch: dict) -> float:
    """Max |megatron logits − HF logits| over the real (vocab) logits of one packed micro-batch, on every rank."""
    inputs = model_inputs(batch)
    length = inputs["input_ids"].shape[1]
    collected = []

    def step(data_iterator, mdl):
        data = dict(next(data_iterator))
        data.pop("labels"), data.pop("loss_mask")
        out = mdl(**data)
        return out, lambda o: (o.sum() * 0, {"logits": _gathered(o).detach()})

    model.eval()
    with torch.no_grad(), compat.device_scope():
        collected = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([inputs]), model=[model], num_microbatches=1,
            seq_length=length, micro_batch_size=1, forward_only=True)
    diff = torch.zeros(())
    if parallel_state.is_pipeline_last_stage():
        hf = LlavaOV15ForConditionalGeneration.from_pretrained(hf_dir).eval()
        with torch.no_grad():
            ref = hf(input_ids=batch["input_ids"], pixel_values=batch.get("pixel_values"),
                     image_grid_thw=batch.get("image_grid_thw"), position_ids=batch["position_ids"],
                     cu_seqlens=batch["cu_seqlens"]).logits
        ours = collected[0]["logits"].reshape(*ref.shape[:2], -1)[..., :ref.shape[-1]]
        diff = (ours - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    model.train()
    return float(diff)


def _micro_batches(stream, policy: Policy) -> list[dict]:
    """This data-parallel rank's ``grad_accum`` micro-batches of the next global step (the loader reads only
    this rank's packs: micro-batches ``rank, rank + dp, ...`` of the global order)."""
    return [next(stream) for _ in range(policy.grad_accum)]


def load_model(init_dir: Path, parallel: Parallel) -> tuple[LlavaOVMegatron, LlavaOV15Config]:
    """This rank's shard of the HF checkpoint in ``init_dir``, converted and loaded into a megatron model."""
    hf_config, hf_state = load_state(init_dir)  # released or in-memory layout, checked strictly
    shard = hf_to_megatron(hf_state, hf_config, parallel.tp, parallel.pp)[
        (parallel.pp_rank, parallel_state.get_tensor_model_parallel_rank())]
    del hf_state
    model = LlavaOVMegatron(hf_config, parallel, padded_vocab(hf_config.text_config.vocab_size, parallel.tp))
    missing, unexpected = model.load_state_dict(shard, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"converted checkpoint does not fit the megatron model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model, hf_config


def prepare(model: LlavaOVMegatron, policy: Policy):
    """Freeze per policy, wrap in megatron DDP, build the distributed optimizer and the lr schedule."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, policy.trainable))
    with compat.device_scope():
        ddp = DistributedDataParallel(config=model.config, module=model, ddp_config=DistributedDataParallelConfig(
            use_distributed_optimizer=True, grad_reduce_in_fp32=True, overlap_grad_reduce=False))
    cfg = OptimizerConfig(optimizer="adam", lr=policy.lr, min_lr=policy.min_lr, weight_decay=policy.weight_decay,
                          adam_beta1=policy.beta1, adam_beta2=policy.beta2, adam_eps=policy.eps,
                          clip_grad=policy.clip_grad, use_distributed_optimizer=True, bf16=False, fp16=False,
                          params_dtype=torch.float32)
    with compat.device_scope():
        optimizer = get_megatron_optimizer(cfg, [ddp])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=policy.lr, min_lr=policy.min_lr, lr_warmup_steps=policy.warmup_steps,
        lr_decay_steps=policy.steps, lr_decay_style="cosine", start_wd=policy.weight_decay,
        end_wd=policy.weight_decay, wd_incr_steps=policy.steps, wd_incr_style="constant")
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    return ddp, optimizer, scheduler


def train_step(ddp: DistributedDataParallel, optimizer, batches: list[dict]) -> tuple[torch.Tensor, float]:
    """One optimizer step over this rank's micro-batches: ([summed loss, loss tokens] on this rank, grad norm)."""
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    length = batches[0]["input_ids"].numel()
    with compat.device_scope():
        reports = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(batches), model=[ddp], num_microbatches=len(batches),
            seq_length=length, micro_batch_size=1, forward_only=False)
        ok, grad_norm, _ = optimizer.step()
    if not ok:
        raise RuntimeError("optimizer step failed (non-finite gradients)")
    return sum((r["lm loss"] for r in reports), torch.zeros(2)), float(grad_norm or 0.0)


def _live(run: Run, history: list[dict]):
    """DVCLive on rank 0, with the per-step log replayed up to the resumed iteration."""
    if run.live_dir is None or dist.get_rank() != 0:
        return None
    from dvclive import Live

    live = Live(dir=str(run.live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
    for row in history:
        _log(live, row)
    return live


def _log(live, row: dict) -> None:
    live.step = row["step"]
    for name in ("loss", "lr", "tokens_per_s"):
        live.log_metric(name, row[name])
    live.next_step()


def train(policy: Policy, run: Run, init_dir: Path, packs: Artifact, identity: dict) -> Result:
    """Train one stage from the HF folder ``init_dir`` on the pack artifact ``packs``; every rank calls this."""
    torch.set_num_threads(run.threads)
    parallel = init(run.tp, run.pp)
    torch.manual_seed(policy.seed)
    model, hf_config = load_model(init_dir, parallel)

    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    pad_id = special_ids(tokenizer)["<|endoftext|>"]
    loader = PackedLoader(packs, policy.micro_batch, pad_id, ImageProcessor.load(init_dir), seed=policy.seed,
                          rank=parallel_state.get_data_parallel_rank(),
                          world=parallel_state.get_data_parallel_world_size())
    step = checkpoint.prepare(run.checkpoints, identity)
    diff = None
    if step is None:  # a fresh start converts: gate it on the logit check
        diff = logit_check(model, init_dir, loader.batch(np.arange(min(CHECK_PACKS, len(loader.packs)))))
        if not diff <= run.logit_tolerance:
            raise RuntimeError(f"HF -> megatron conversion check failed: max |logit diff| {diff:.3g} > tolerance "
                               f"{run.logit_tolerance} (params.yaml train.common.logit_tolerance)")

    ddp, optimizer, scheduler = prepare(model, policy)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    history: list[dict] = []
    start = 0
    if step is not None:
        common = checkpoint.load(run.checkpoints, step, model, optimizer)
        scheduler.load_state_dict(common["scheduler"])
        loader.load_state_dict(common["loader"])
        history, start, diff = common["history"], step, common["logit_max_abs_diff"]
    live = _live(run, history)
    stream = iter(loader)
    progress = tqdm(range(start, policy.steps), desc=f"train {policy.stage}", unit="step",
                    disable=dist.get_rank() != 0, initial=start, total=policy.steps)
    for it in progress:
        t0 = time.perf_counter()
        batches = _micro_batches(stream, policy)
        tokens = torch.tensor(float(sum(int((b["input_ids"] != pad_id).sum()) for b in batches)))
        loss, grad_norm = train_step(ddp, optimizer, batches)
        scheduler.step(increment=1)
        if parallel_state.get_tensor_model_parallel_rank() != 0:
            loss.zero_()  # one copy per data-parallel replica (the last stage holds it)
        tokens = tokens if parallel_state.is_pipeline_first_stage() and \
            parallel_state.get_tensor_model_parallel_rank() == 0 else torch.zeros(())
        # one collective for the loss, the token count and the step time; the ranks' mean step time makes every
        # rank log the same history, which is part of the checkpoint's common state (dist_checkpointing expects it
        # to agree across ranks)
        summed = torch.cat([loss, tokens[None], torch.tensor([time.perf_counter() - t0])])
        dist.all_reduce(summed)
        seconds = float(summed[3]) / dist.get_world_size()
        row = {"step": it, "loss": float(summed[0] / summed[1].clamp(min=1)), "lr": scheduler.get_lr(
            optimizer.param_groups[0]), "tokens": float(summed[2]), "loss_tokens": float(summed[1]),
            "grad_norm": grad_norm, "seconds": seconds, "tokens_per_s": float(summed[2]) / seconds}
        history.append(row)
        if live is not None:
            _log(live, row)
        progress.set_postfix(loss=f"{row['loss']:.3f}")
        if (it + 1) % run.save_every == 0 or it + 1 == policy.steps:
            checkpoint.save(run.checkpoints, it + 1, model, optimizer,
                            {"scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                             "history": history, "iteration": it + 1, "logit_max_abs_diff": diff})
    if live is not None:
        live.end()
    step_seconds = sum(r["seconds"] for r in history)  # every run that made this history, resumed ones included
    tail = history[-max(1, len(history) // 10):]
    metrics = {"steps": policy.steps, "tokens": int(sum(r["tokens"] for r in history)),
               "loss_tokens": int(sum(r["loss_tokens"] for r in history)),
               "initial_loss": round(history[0]["loss"], 4), "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 4),
               "tokens_per_s": round(sum(r["tokens"] for r in history) / step_seconds, 1),
               "train_seconds": round(step_seconds, 2), "resumed_from": start, "trainable_parameters": n_trainable,
               "logit_max_abs_diff": diff, "world_size": dist.get_world_size(), "tp": run.tp, "pp": run.pp}
    return Result(model=model, hf_config=hf_config, parallel=parallel, metrics=metrics)

