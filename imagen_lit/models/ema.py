"""Exponential moving average of the network weights, used for sampling (Imagen App. F)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """EMA copy of a module; decay warms up as min(decay, (1 + n) / (10 + n)) so short runs get a useful average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay used for the next update."""
        n = int(self.num_updates) + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * model; buffers are copied."""
        weight = 1.0 - self.current_decay()
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, weight)
        for eb, b in zip(self.module.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self
