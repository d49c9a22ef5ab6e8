"""Learning-rate schedules for the stages (Imagen App. F: linear warmup, then constant)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 10000) -> LambdaLR:
    """Linear warmup from 0 to the base learning rate over warmup_steps, then constant."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
