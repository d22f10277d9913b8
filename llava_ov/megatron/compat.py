"""Run megatron-core on a machine without CUDA: the one place that adapts it to CPU + gloo.

megatron-core hard-codes CUDA in a few places that a CPU run reaches: ``torch.cuda.current_device()`` for buffer
and rotary-table devices, ``torch.cuda.synchronize()``, a CUDA RNG-state tracker for dropout/init forks, the CUDA
generator's state that activation recompute saves and restores around a layer (the CPU generator, which CPU
dropout draws from, is saved and restored beside it already),
``device='cuda'`` literals and ``Tensor.type() == 'torch.cuda.FloatTensor'`` checks in the optimizer, gradient
clipping and DDP buffers, ``.cuda()`` moves in optimizer state loading. :func:`apply` fixes the first three
process-wide (they would only raise on a CPU machine anyway); :func:`device_scope` maps the rest to the CPU only
inside the optimizer/DDP/checkpoint code paths that need it, so the model's forward pays nothing.

One more CPU-only path: without Apex/TE the distributed optimizer wraps ``torch.optim.AdamW``, and its
``load_state_dict`` gives every parameter the *same* ``step`` tensor; AdamW then increments that one tensor once
per parameter, and the next checkpoint save fails (``assert len(steps) == 1``); and its ``sharded_state_dict``
(needed to *load* a checkpoint) fails on a fresh AdamW whose state is still empty. :func:`apply` wraps both: each
parameter gets its own ``step`` copy, and an empty state is first filled exactly the way AdamW fills it on its
first step (step 0, zero moments), and the loaded moments (which carry no ``step``: it is restored from the param
groups) are copied around ``step``; so a resumed run steps exactly like an uninterrupted one.

Nothing here runs on a machine with CUDA: :func:`apply` returns ``False`` and :func:`device_scope` is a no-op.
The patches are tested against the megatron-core versions in :data:`SUPPORTED` and refuse others.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch.overrides import TorchFunctionMode

SUPPORTED = SpecifierSet(">=0.16,<0.17")
_APPLIED = False


def megatron_version() -> Version:
    from megatron.core import package_info

    return Version(package_info.__version__)


def needed() -> bool:
    """True on a machine where megatron-core cannot use CUDA."""
    return not torch.cuda.is_available()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare ordinal means a CUDA device in torch's API


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU and reports CPU tensors' legacy type strings as CUDA ones."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        return func(*args, **kwargs)


def apply() -> bool:
    """Patch megatron-core's process-wide CUDA assumptions for a CPU run; idempotent. False when CUDA exists."""
    global _APPLIED
    if not needed():
        return False
    version = megatron_version()
    if version not in SUPPORTED:
        raise RuntimeError(f"llava_ov.megatron.compat is tested with megatron-core {SUPPORTED}, found {version}: "
                           f"install a supported version (pip install -c requirements/constraints.txt "
                           f"'megatron-core{SUPPORTED}') or re-validate these CPU patches for {version}")
    if _APPLIED:
        return True
    from megatron.core import tensor_parallel
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as transformer_utils

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda device=None: None
    # The inference tracker's fork() is a plain context: dropout/init draw from torch's seeded CPU generator.
    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    tensor_parallel.random._get_cuda_rng_state = lambda *args, **kwargs: torch.empty(0, dtype=torch.uint8)
    tensor_parallel.random._set_cuda_rng_state = lambda *args, **kwargs: None
    transformer_utils.get_default_causal_mask = _cpu_causal_mask
    _unshare_adam_steps()
    fused_softmax.get_default_causal_mask = _cpu_causal_mask  # imported by name there
    _APPLIED = True
    return True


def _unshare_adam_steps() -> None:
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    original = distrib_optimizer.DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        original(self, state_dict)
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()

    original_sharded = distrib_optimizer.DistributedOptimizer.sharded_state_dict

    def sharded_state_dict(self, *args, **kwargs):
        inner = self.optimizer
        if not inner.state:
            for group in inner.param_groups:
                for param in group["params"]:
                    inner.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                          "exp_avg_sq": torch.zeros_like(param)}
        return original_sharded(self, *args, **kwargs)

    original_set = distrib_optimizer.DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        if "step" in state and "step" not in tensors:
            tensors = {**tensors, "step": state["step"]}
        original_set(self, model_param, tensors)

    distrib_optimizer.DistributedOptimizer.load_state_dict = load_state_dict
    distrib_optimizer.DistributedOptimizer.sharded_state_dict = sharded_state_dict
    distrib_optimizer.DistributedOptimizer._set_main_param_and_optimizer_states = set_states


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    """megatron's ``get_default_causal_mask`` (True above the diagonal = masked), on the CPU."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


@contextlib.contextmanager
def device_scope() -> Iterator[None]:
    """Inside: ``device='cuda'``, ``.cuda()`` and CUDA type checks resolve to the CPU (no-op when CUDA exists)."""
    if not needed():
        yield
        return
    apply()
    with _CudaToCpu():
        yield
