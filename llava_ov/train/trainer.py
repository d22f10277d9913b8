"""One training stage on megatron-core: HF checkpoint in, trained megatron model out (exported by the caller).

Every rank (torchrun) runs :func:`train`: it reads only its own TP/PP shard of the stage's starting HF checkpoint
(the slices it holds, through the safetensors index), gates the conversion on a logit check (megatron forward vs
HF forward on a few positions of the first packs, on one rank), freezes what the policy does not train, wraps the
model in megatron's DDP with the distributed optimizer (fp32 main params and grads under bf16/fp16), and steps
through packed micro-batches with megatron's forward/backward schedule (per-token loss over assistant tokens,
cosine schedule with warmup, gradient clipping). Each data-parallel rank collates only its own micro-batches.
Checkpoints go to ``run.checkpoints`` every ``save_every`` steps and a rerun resumes from the newest; a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
from llava_ov.megatron.convert import padded_vocab, rank_shard
from llava_ov.megatron.model import Compute, LlavaOVMegatron, Parallel, device
from llava_ov.megatron.precision import precision
from llava_ov.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration
from llava_ov.model.modeling import open_checked, packed_causal_mask
from llava_ov.packing.loader import PackedLoader
from llava_ov.text.tokenizer import special_ids
from llava_ov.train import checkpoint
from llava_ov.train.batches import forward_step, local_inputs, model_inputs, to_device
from llava_ov.train.distributed import init
from llava_ov.train.policy import Policy, is_trainable
from llava_ov.vision.image_processing import ImageProcessor


CHECK_PACKS = 2  # the logit check's fixed batch: the first two packs of the plan (two rows, many samples)
CHECK_POSITIONS = 256  # logits compared at this many positions spread over the batch: bounded memory at any vocab


@dataclass(frozen=True)
class Run:
    """How a stage runs (not what it learns): parallel layout, precision, memory knobs, checkpoint cadence."""

    tp: int
    pp: int
    threads: int
    save_every: int
    logit_tolerance: float
    checkpoints: Path
    live_dir: Path | None
    cp: int = 1
    sequence_parallel: bool = False
    dtype: str = "fp32"
    recompute: str = "none"
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False

    @classmethod
    def from_params(cls, common: dict, checkpoints: Path, live_dir: Path | None) -> "Run":
        """The run of ``params.yaml: train.common``."""
        return cls(tp=int(common["tp"]), pp=int(common["pp"]), threads=int(common["threads"]),
                   save_every=int(common["save_every"]), logit_tolerance=float(common["logit_tolerance"]),
                   checkpoints=checkpoints, live_dir=live_dir, cp=int(common["cp"]),
                   sequence_parallel=bool(common["sequence_parallel"]), dtype=str(common["dtype"]),
                   recompute=str(common["recompute"]), overlap_grad_reduce=bool(common["overlap_grad_reduce"]),
                   overlap_param_gather=bool(common["overlap_param_gather"]))

    def compute(self) -> Compute:
        """Precision and recompute of the model (refuses fp8 where Transformer Engine or Hopper is missing)."""
        return Compute(precision=precision(self.dtype), recompute=self.recompute)


@dataclass
class Result:
    model: LlavaOVMegatron
    hf_config: LlavaOV15Config
    parallel: Parallel
    metrics: dict


def _gathered(output: torch.Tensor) -> torch.Tensor:
    return gather_from_tensor_model_parallel_region(output) if parallel_state.get_tensor_model_parallel_world_size() > 1 \
        else output


def check_positions(loss_mask_shape: tuple[int, int], count: int = CHECK_POSITIONS) -> torch.Tensor:
    """[1, t] boolean mask of ``count`` positions spread evenly over a flattened batch of ``t`` tokens."""
    total = loss_mask_shape[1]
    mask = torch.zeros(loss_mask_shape, dtype=torch.bool)
    mask[0, torch.linspace(0, total - 1, min(count, total)).long()] = True
    return mask


def logit_check(model: LlavaOVMegatron, hf_dir: Path, batch: dict) -> float:
    """Max |megatron logits − HF logits| over the real (vocab) logits at :data:`CHECK_POSITIONS` positions of
    one packed micro-batch; every rank gets the value.

    Memory stays bounded at any scale: the megatron model projects only those positions onto the vocabulary, and
    the HF reference is built once, on the last pipeline stage's first tensor- and data-parallel rank, in the
    training dtype on that rank's device (its LM runs hidden states only; the head runs on the chosen positions).
    """
    inputs = model_inputs(batch)
    inputs["loss_mask"] = check_positions(tuple(inputs["loss_mask"].shape))
    inputs = local_inputs(inputs)
    length = inputs["input_ids"].shape[1]

    def step(data_iterator, mdl):
        data = dict(next(data_iterator))
        data.pop("labels"), data.pop("origin", None)
        out = mdl(**data)
        return out, lambda o: (o.sum() * 0, {"logits": _gathered(o).detach()})

    model.eval()
    with torch.no_grad(), compat.device_scope():
        collected = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([inputs]), model=[model], num_microbatches=1,
            seq_length=length, micro_batch_size=1, forward_only=True)
    diff = torch.zeros((), device=device())
    reference_rank = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0 \
        and parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_context_parallel_rank() == 0
    if reference_rank:
        rows = inputs["loss_mask"][0].nonzero()[:, 0]
        if "cp_index" in inputs:  # this CP rank's positions in the padded layout -> positions in the batch
            rows = inputs["origin"][inputs["cp_index"][rows]]
        ref = _hf_logits(hf_dir, batch, rows, model.config.params_dtype)
        ours = collected[0]["logits"][0, :, :ref.shape[-1]]
        diff = (ours.float() - ref.float()).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    model.train()
    return float(diff)


def _hf_logits(hf_dir: Path, batch: dict, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The HF model's logits at flattened positions ``rows`` of a packed batch, in ``dtype`` on this device."""
    hf = LlavaOV15ForConditionalGeneration.from_pretrained(hf_dir, dtype=dtype, device=device())
    on = to_device(batch, device())
    with torch.no_grad():
        embeds = hf.model.embed(on["input_ids"], on.get("pixel_values"), on.get("image_grid_thw"))
        b, length = embeds.shape[:2]
        mask = packed_causal_mask(on["cu_seqlens"], b, length, embeds.device)
        hidden = hf.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=on["position_ids"]).last_hidden_state
        logits = hf.lm_head(hidden.reshape(b * length, -1)[rows.to(embeds.device)])
    del hf
    return logits


def load_model(init_dir: Path, parallel: Parallel, compute: Compute = Compute()
               ) -> tuple[LlavaOVMegatron, LlavaOV15Config, int]:
    """This rank's shard of the HF checkpoint in ``init_dir`` in a megatron model, and the bytes read for it.

    The folder is checked strictly from its safetensors headers (every tensor, right shapes), then only the
    slices this (pipeline, tensor) rank holds are read: about 1/TP of its pipeline stage's weights.
    """
    hf_config, files = open_checked(init_dir)  # released or in-memory layout
    model = LlavaOVMegatron(hf_config, parallel, padded_vocab(hf_config.text_config.vocab_size, parallel.tp), compute)
    with files.slices() as read:
        shard = rank_shard(hf_config, read, parallel.tp, parallel.pp, parallel.pp_rank,
                           parallel_state.get_tensor_model_parallel_rank(), te=model.te_names)
        bytes_read = read.bytes_read
    missing, unexpected = model.load_state_dict(shard, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"converted checkpoint does not fit the megatron model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model, hf_config, bytes_read


def prepare(model: LlavaOVMegatron, policy: Policy, run: Run):
    """Freeze per policy, wrap in megatron DDP, build the distributed optimizer and the lr schedule.

    The DDP buffers reduce float32 gradients and the optimizer keeps float32 main params whatever the model's
    dtype. With ``overlap_grad_reduce`` the reduce-scatter of a bucket starts as soon as its gradients are ready
    in backward; with ``overlap_param_gather`` the all-gather of updated params runs bucket by bucket in the next
    forward (:func:`synced_params` completes it before the weights are read).
    """
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, policy.trainable))
    with compat.device_scope():
        ddp = DistributedDataParallel(config=model.config, module=model, ddp_config=DistributedDataParallelConfig(
            use_distributed_optimizer=True, grad_reduce_in_fp32=True, overlap_grad_reduce=run.overlap_grad_reduce,
            overlap_param_gather=run.overlap_param_gather))
    cfg = OptimizerConfig(optimizer="adam", lr=policy.lr, min_lr=policy.min_lr, weight_decay=policy.weight_decay,
                          adam_beta1=policy.beta1, adam_beta2=policy.beta2, adam_eps=policy.eps,
                          clip_grad=policy.clip_grad, use_distributed_optimizer=True,
                          overlap_param_gather=run.overlap_param_gather, **run.compute().precision.optimizer())
    with compat.device_scope():
        optimizer = get_megatron_optimizer(cfg, [ddp])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=policy.lr, min_lr=policy.min_lr, lr_warmup_steps=policy.warmup_steps,
        lr_decay_steps=policy.steps, lr_decay_style="cosine", start_wd=policy.weight_decay,
        end_wd=policy.weight_decay, wd_incr_steps=policy.steps, wd_incr_style="constant")
    config = model.config
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss  # fp16's loss scale (1 otherwise)
    config.no_sync_func = ddp.no_sync
    if run.overlap_grad_reduce:
        config.grad_sync_func = ddp.start_grad_sync
    if run.overlap_param_gather:
        config.param_sync_func = ddp.start_param_sync
    return ddp, optimizer, scheduler


@contextlib.contextmanager
def synced_params(ddp: DistributedDataParallel, run: Run) -> Iterator[None]:
    """Inside: every rank's parameters are the updated ones (with ``overlap_param_gather`` the all-gather after
    an optimizer step is otherwise finished only by the next forward's hooks)."""
    if not run.overlap_param_gather:
        yield
        return
    with compat.device_scope():
        ddp.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        ddp.enable_forward_pre_hook()


def train_step(ddp: DistributedDataParallel, optimizer, batches: list[dict],
               loss_scaling: bool = False) -> tuple[torch.Tensor, float, bool]:
    """One optimizer step over this rank's micro-batches: ([summed loss, loss tokens] on this rank, grad norm,
    whether the step was applied: only fp16's loss scaling may skip one, on overflowing gradients)."""
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    length = batches[0]["input_ids"].numel()
    with compat.device_scope():
        reports = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(batches), model=[ddp], num_microbatches=len(batches),
            seq_length=length, micro_batch_size=1, forward_only=False)
        ok, grad_norm, _ = optimizer.step()
    if not ok and not loss_scaling:
        raise RuntimeError("optimizer step failed (non-finite gradients)")
    return sum((r["lm loss"] for r in reports), torch.zeros(2, device=device())), float(grad_norm or 0.0), ok


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
    compute = run.compute()
    parallel = init(run.tp, run.pp, run.cp, run.sequence_parallel, policy.seed)
    torch.manual_seed(policy.seed)
    model, hf_config, bytes_read = load_model(init_dir, parallel, compute)

    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    pad_id = special_ids(tokenizer)["<|endoftext|>"]
    loader = PackedLoader(packs, policy.micro_batch, pad_id, ImageProcessor.load(init_dir), seed=policy.seed)
    step = checkpoint.prepare(run.checkpoints, identity)
    diff = None
    if step is None:  # a fresh start converts: gate it on the logit check
        diff = logit_check(model, init_dir, loader.batch(np.arange(min(CHECK_PACKS, len(loader.packs)))))
        if not diff <= run.logit_tolerance:
            raise RuntimeError(f"HF -> megatron conversion check failed: max |logit diff| {diff:.3g} > tolerance "
                               f"{run.logit_tolerance} (params.yaml train.common.logit_tolerance)")

    ddp, optimizer, scheduler = prepare(model, policy, run)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    history: list[dict] = []
    start = 0
    if step is not None:
        common = checkpoint.load(run.checkpoints, step, model, optimizer)
        scheduler.load_state_dict(common["scheduler"])
        loader.load_state_dict(common["loader"])
        history, start, diff = common["history"], step, common["logit_max_abs_diff"]
    live = _live(run, history)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    here = device()
    skipped = 0
    progress = tqdm(range(start, policy.steps), desc=f"train {policy.stage}", unit="step",
                    disable=dist.get_rank() != 0, initial=start, total=policy.steps)
    for it in progress:
        t0 = time.perf_counter()
        batches = loader.take(policy.grad_accum * dp, dp_rank, dp)  # only this rank's micro-batches are collated
        tokens = torch.tensor(float(sum(int((b["input_ids"] != pad_id).sum()) for b in batches)), device=here)
        loss, grad_norm, applied = train_step(ddp, optimizer, batches, compute.precision.loss_scaling)
        skipped += not applied
        scheduler.step(increment=1)
        if parallel_state.get_tensor_model_parallel_rank() != 0:
            loss.zero_()  # one copy per data-parallel replica (the last stage holds it)
        counts = parallel_state.is_pipeline_first_stage() and parallel_state.get_tensor_model_parallel_rank() == 0 \
            and parallel_state.get_context_parallel_rank() == 0
        tokens = tokens if counts else torch.zeros((), device=here)
        # one collective for the loss, the token count and the step time; the ranks' mean step time makes every
        # rank log the same history, which is part of the checkpoint's common state (dist_checkpointing expects it
        # to agree across ranks)
        summed = torch.cat([loss, tokens[None], torch.tensor([time.perf_counter() - t0], device=here)])
        dist.all_reduce(summed)
        summed = summed.cpu()
        seconds = float(summed[3]) / dist.get_world_size()
        row = {"step": it, "loss": float(summed[0] / summed[1].clamp(min=1)), "lr": scheduler.get_lr(
            optimizer.param_groups[0]), "tokens": float(summed[2]), "loss_tokens": float(summed[1]),
            "grad_norm": grad_norm, "seconds": seconds, "tokens_per_s": float(summed[2]) / seconds}
        history.append(row)
        if live is not None:
            _log(live, row)
        progress.set_postfix(loss=f"{row['loss']:.3f}")
        if (it + 1) % run.save_every == 0 or it + 1 == policy.steps:
            with synced_params(ddp, run):
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
               "logit_max_abs_diff": diff, "world_size": dist.get_world_size(), "tp": run.tp, "pp": run.pp,
               "dtype": run.dtype, "init_bytes_read": bytes_read}
    if compute.precision.loss_scaling:
        metrics["skipped_steps"] = skipped
    return Result(model=model, hf_config=hf_config, parallel=parallel, metrics=metrics)
