"""Packed micro-batches (docs/interfaces.md "Packed batch") → megatron inputs, and the assistant-token loss.

A micro-batch of ``B`` packs of length ``L`` is flattened into one ``thd`` row of ``B·L`` tokens whose sample
boundaries are the loader's ``cu_seqlens`` (each pack's trailing padding is its own segment). Labels are shifted
by one inside each pack row (megatron's output layer predicts the label at the same position); the loss mask is
the assistant tokens (and their closing ``<|im_end|>``), i.e. every label that is not ``-100``.
"""

from __future__ import annotations

from functools import partial

import torch

from llava_ov.megatron.model import device

IGNORE = -100


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] labels of tokens → [B, L] labels of the next token (last position of each row ignored)."""
    out = torch.full_like(labels, IGNORE)
    out[:, :-1] = labels[:, 1:]
    return out


def model_inputs(batch: dict) -> dict:
    """Flattened ``input_ids`` [1, B·L], shifted ``labels`` (ignored → 0), ``loss_mask``, ``cu_seqlens``, images."""
    targets = shift_labels(batch["labels"]).reshape(1, -1)
    mask = targets != IGNORE
    out = {"input_ids": batch["input_ids"].reshape(1, -1), "labels": torch.where(mask, targets, 0),
           "loss_mask": mask, "cu_seqlens": batch["cu_seqlens"]}
    if "pixel_values" in batch:
        out["pixel_values"], out["image_grid_thw"] = batch["pixel_values"], batch["image_grid_thw"]
    return out


def loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    """megatron per-token loss contract: (summed loss, token count, {report}) for the micro-batch."""
    mask = loss_mask.float()
    total = (output.float() * mask).sum()
    count = mask.sum()
    return total, count.to(torch.int), {"lm loss": torch.stack([total.detach(), count])}


def to_device(inputs: dict, where: torch.device) -> dict:
    """The tensors of ``inputs`` on ``where`` (copied while the host goes on: one micro-batch at a time)."""
    return {k: v.to(where, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}


def forward_step(data_iterator, model):
    """megatron schedule hook: run one micro-batch on this rank's device; the loss is reduced on the last stage."""
    inputs = to_device(model_inputs(next(data_iterator)), device())
    output = model(**inputs)  # the loss mask also tells the model where logits are needed
    return output, partial(loss_func, inputs["loss_mask"])
