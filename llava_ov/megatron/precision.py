"""Training precision from ``params.yaml: train.common.dtype``: what the model computes in, what the optimizer keeps.

- ``fp32``: everything in float32 (the tiny/smoke profiles on CPU; bit-compatible with the HF model).
- ``bf16``: parameters and activations in bfloat16; megatron's distributed optimizer keeps float32 *main*
  parameters and the DDP buffers reduce float32 gradients (``grad_reduce_in_fp32``), so updates are not lost to
  bf16 rounding. No loss scaling: bf16 has float32's exponent range. The published recipe's setting.
- ``fp16``: like bf16 but float16, with megatron's dynamic loss scaling (fp16 underflows without it); a step whose
  scaled gradients overflow is skipped and the scale halves.
- ``fp8``: bf16 parameters, linear layers in FP8 through Transformer Engine's delayed-scaling recipe (e4m3 forward,
  e5m2 backward). Only with Transformer Engine on a Hopper-or-newer GPU; refused otherwise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

DTYPES = ("fp32", "bf16", "fp16", "fp8")
FP8_MIN_CAPABILITY = (9, 0)  # Hopper: the first GPUs with FP8 tensor cores that TE's delayed recipe targets


@dataclass(frozen=True)
class Precision:
    """One of :data:`DTYPES`, with the megatron config keys it implies."""

    name: str

    @property
    def params_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16}.get(self.name, torch.bfloat16)

    @property
    def loss_scaling(self) -> bool:
        """Only fp16 scales the loss (and may skip a step on overflow)."""
        return self.name == "fp16"

    def transformer(self) -> dict:
        """``TransformerConfig`` keys: parameter/pipeline dtypes, half-precision flags, FP8 recipe."""
        out = dict(params_dtype=self.params_dtype, pipeline_dtype=self.params_dtype,
                   bf16=self.params_dtype == torch.bfloat16, fp16=self.name == "fp16")
        if self.name == "fp8":
            out.update(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
        return out

    def optimizer(self) -> dict:
        """``OptimizerConfig`` keys: half-precision params get fp32 main params; fp16 gets a dynamic loss scale."""
        return dict(params_dtype=self.params_dtype, bf16=self.params_dtype == torch.bfloat16,
                    fp16=self.name == "fp16", loss_scale=None)  # None with fp16: dynamic scaling


def fp8_unavailable() -> str | None:
    """Why FP8 cannot run here, or None when Transformer Engine and a Hopper-or-newer GPU are present."""
    if importlib.util.find_spec("transformer_engine") is None:
        return "Transformer Engine is not installed (pip install '.[gpu]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    capability = torch.cuda.get_device_capability()
    if capability < FP8_MIN_CAPABILITY:
        return (f"GPU {torch.cuda.get_device_name()} has compute capability {capability[0]}.{capability[1]}; FP8 "
                f"needs {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Hopper) or newer")
    return None


def precision(name: str) -> Precision:
    """The precision ``name`` (``train.common.dtype``); refuses an unknown name, and fp8 where it cannot run."""
    if name not in DTYPES:
        raise ValueError(f"params.yaml train.common.dtype is {name!r}; expected one of {DTYPES}")
    if name == "fp8":
        reason = fp8_unavailable()
        if reason:
            raise RuntimeError(f"train.common.dtype fp8 needs Transformer Engine on a Hopper-or-newer GPU: {reason}. "
                               f"Use bf16 here")
    return Precision(name)
