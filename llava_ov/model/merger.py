"""The LLaVA-OV-1.5 patch merger: ViT patch features → one LLM-width token per 2×2 window.

Patches arrive in 2×2-window order (four consecutive rows form one window), so merging is a reshape: LayerNorm
each patch, concatenate the window's four features, then a GELU MLP projects into the LLM's hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from llava_ov.model.configuration import RiceVisionConfig


class PatchMerger(nn.Module):
    """``model.visual.merger``: ``ln_q`` then ``mlp`` (``mlp.0`` Linear, GELU, ``mlp.2`` Linear), all with biases."""

    def __init__(self, cfg: RiceVisionConfig) -> None:
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(self.merged, self.merged), nn.GELU(),
                                 nn.Linear(self.merged, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[P, hidden] patch features (P a multiple of merge²) → [P / merge², out_hidden_size]."""
        return self.mlp(self.ln_q(x).view(-1, self.merged))

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """The stage-0 initialisation: Linear weights N(0, std), zero biases, LayerNorm (1, 0)."""
        for linear in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        nn.init.ones_(self.ln_q.weight)
        nn.init.zeros_(self.ln_q.bias)
