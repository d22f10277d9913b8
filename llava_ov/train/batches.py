"""Packed micro-batches (docs/interfaces.md "Packed batch") → megatron inputs, and the assistant-token loss.

A micro-batch of ``B`` packs of length ``L`` is flattened into one ``thd`` row of ``B·L`` tokens whose sample
boundaries are the loader's ``cu_seqlens`` (each pack's trailing padding is its own segment). Labels are shifted
by one inside each pack row (megatron's output layer predicts the label at the same position); the loss mask is
the assistant tokens (and their closing ``<|im_end|>``), i.e. every label that is not ``-100``.
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import torch
from megatron.core import parallel_state

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


def cp_layout(inputs: dict, multiple: int) -> dict:
    """Context parallelism's layout of flattened inputs: every segment padded to a multiple of ``multiple``
    tokens (CP cuts each segment into 2·CP equal chunks). ``cu_seqlens`` become the true lengths' boundaries and
    ``cu_seqlens_padded`` the padded ones (what Transformer Engine's THD attention reads); ``origin`` maps each
    padded position to its position in ``inputs`` (-1: padding, never labelled)."""
    cu = inputs["cu_seqlens"].tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    offsets = [0, *itertools.accumulate(math.ceil(n / multiple) * multiple for n in lengths)]
    origin = torch.full((offsets[-1],), -1, dtype=torch.long)
    for start, first, n in zip(offsets[:-1], cu[:-1], lengths):
        origin[start:start + n] = torch.arange(first, first + n)
    real = origin >= 0

    def spread(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((1, offsets[-1]))
        out[0, real] = x[0, origin[real]]
        return out

    return {**inputs, **{k: spread(inputs[k]) for k in ("input_ids", "labels", "loss_mask")},
            "cu_seqlens": torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32),
            "cu_seqlens_padded": torch.tensor(offsets, dtype=torch.int32), "origin": origin}


def local_inputs(inputs: dict) -> dict:
    """``model_inputs`` on this rank's device, and with context parallelism in its layout with this CP rank's
    share of the tokens: the labels and loss mask of its positions (``cp_index``, Transformer Engine's
    load-balanced split: chunks r and 2·CP-1-r of every segment), the full ``input_ids`` (the model embeds the
    whole sequence, images included, then keeps its positions)."""
    cp = parallel_state.get_context_parallel_world_size()
    if cp > 1:  # each CP rank's tokens also split over TP under sequence parallelism
        inputs = cp_layout(inputs, 2 * cp * parallel_state.get_tensor_model_parallel_world_size())
    inputs = to_device(inputs, device())
    if cp > 1:
        import transformer_engine_torch as tex  # context parallelism requires TE (llava_ov.train.distributed)

        index = tex.thd_get_partitioned_indices(inputs["cu_seqlens_padded"], inputs["input_ids"].shape[1], cp,
                                                parallel_state.get_context_parallel_rank())
        inputs.update(labels=inputs["labels"].index_select(1, index),
                      loss_mask=inputs["loss_mask"].index_select(1, index), cp_index=index)
    return inputs


def forward_step(data_iterator, model):
    """megatron schedule hook: run one micro-batch on this rank's device; the loss is reduced on the last stage."""
    inputs = local_inputs(model_inputs(next(data_iterator)))
    inputs.pop("origin", None)
    output = model(**inputs)  # the loss mask also tells the model where logits are needed
    return output, partial(loss_func, inputs["loss_mask"])
