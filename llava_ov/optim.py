"""The optimiser of the from-scratch pretraining stages (``vit_base``, ``llm_base``, ``concept_encoder``): AdamW
under a one-cycle learning-rate schedule, stepped once per batch.

The order of operations inside a step (zero the gradients, backward, clip, optimiser step, schedule step) is part
of each stage's byte-reproducible weights; it lives here once so that it cannot drift between the stages. (The
recipe's training stages run Megatron's optimiser instead: ``llava_ov/train``.)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


class OneCycleAdamW:
    """AdamW + ``OneCycleLR`` over ``total_steps`` steps, optional gradient-norm clipping, and the loss history."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, total_steps: int, pct_start: float,
                 weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), clip_grad: float | None = None):
        self.params = list(params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, lr, total_steps=total_steps,
                                                            pct_start=pct_start)
        self.clip_grad = clip_grad
        self.losses: list[float] = []

    def step(self, loss: torch.Tensor) -> float:
        """One optimisation step on ``loss``; returns its value."""
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.optimizer.step()
        self.schedule.step()
        self.losses.append(loss.item())
        return self.losses[-1]

    def loss_summary(self) -> dict[str, float]:
        """``first_loss`` and ``final_loss`` (the mean over the last tenth of the steps, less noisy than one)."""
        tail = max(1, len(self.losses) // 10)
        return {"first_loss": round(self.losses[0], 4), "final_loss": round(float(np.mean(self.losses[-tail:])), 4)}

