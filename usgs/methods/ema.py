"""Exponential moving average of weights (momentum/teacher encoders) and its momentum schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameters only (MoCo, He et al. 2020)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def cosine_momentum_schedule(base: float, final: float, steps: int) -> Tensor:
    """Momentum rising from ``base`` to ``final`` on a half cosine over ``steps`` (DINO, Caron et al. 2021)."""
    i = torch.arange(max(1, steps), dtype=torch.float64)
    return final - (final - base) * (torch.cos(math.pi * i / max(1, steps)) + 1) / 2
