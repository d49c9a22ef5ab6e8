"""Optimizers and learning-rate schedules for the stages (Imagen App. F: linear warmup, then constant; or decayed to
zero), and the CPU Adam that ZeRO-Offload steps with."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def offloads_optimizer(strategy: Any) -> bool:
    """Whether a (DeepSpeed) strategy's config offloads the optimizer to CPU."""
    config = getattr(strategy, "config", None)
    return bool(isinstance(config, dict) and config.get("zero_optimization", {}).get("offload_optimizer"))


def cpu_adam(optimizer_factory: Callable[..., Optimizer], params: Iterable[nn.Parameter]) -> Optimizer:
    """ZeRO-Offload steps on CPU: the configured Adam/AdamW (a partial) as DeepSpeedCPUAdam, same hyperparameters."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    func = getattr(optimizer_factory, "func", None)
    if func not in (torch.optim.AdamW, torch.optim.Adam):
        raise ValueError(f"optimizer offload supports Adam/AdamW, got {func}; use deepspeed_zero3 instead")
    keywords = getattr(optimizer_factory, "keywords", {})
    kwargs = {k: keywords[k] for k in ("lr", "betas", "eps", "weight_decay") if k in keywords}
    return DeepSpeedCPUAdam(params, adamw_mode=func is torch.optim.AdamW, **kwargs)


def refuse_partitioned(optimizer: Optimizer, under_deepspeed: bool) -> None:
    """An optimizer that works on whole weight matrices (Muon) cannot step DeepSpeed ZeRO's flat partitions."""
    if under_deepspeed and getattr(optimizer, "needs_whole_matrices", False):
        raise ValueError(f"{type(optimizer).__name__} needs whole weight matrices, which DeepSpeed partitions; "
                         "use stage.optimizer._target_=torch.optim.AdamW with a deepspeed strategy")


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 10000) -> LambdaLR:
    """Linear warmup from 0 to the base learning rate over warmup_steps, then constant."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


class BudgetClock:
    """The fraction of a wall-clock budget spent, read from Lightning's Timer (trainer.max_time); 0 until attached."""

    def __init__(self) -> None:
        self.timer: Any = None

    def fraction(self) -> float:
        """time_elapsed / (time_elapsed + time_remaining) of the training stage, in [0, 1]."""
        if self.timer is None:
            return 0.0
        elapsed, remaining = self.timer.time_elapsed(), self.timer.time_remaining()
        return min(1.0, elapsed / max(elapsed + remaining, 1e-9))


class BudgetedLambdaLR(LambdaLR):
    """LambdaLR that carries a BudgetClock; the clock (a live Timer) stays out of the checkpoint, whose restored
    Timer state is what the clock reads on resume."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float], clock: BudgetClock | None) -> None:
        self.budget_clock = clock
        super().__init__(optimizer, lr_lambda)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("budget_clock", None)
        return state


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0,
                  time_budget: bool = False) -> LambdaLR:
    """Linear warmup, then cosine decay to final_ratio x the base learning rate at total_steps (fixed-budget runs).

    A run that stops at a fixed step budget ends on a small learning rate instead of mid-plateau. With time_budget,
    the decay's progress is the larger of the steps' fraction and the wall-clock budget's (trainer.max_time, through
    `attach_budget_clock`), so the cosine reaches its end when either budget runs out: a fast machine spends its
    whole time budget on steps, a slow one still anneals before its time guard stops it.
    """
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
    clock = BudgetClock() if time_budget else None

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        if clock is not None:
            progress = max(progress, clock.fraction())
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return BudgetedLambdaLR(optimizer, factor, clock)


def attach_budget_clock(scheduler: Any, trainer: Any) -> None:
    """Point a time-budgeted schedule at the trainer's Timer; a no-op for every other schedule."""
    clock = getattr(scheduler, "budget_clock", None)
    if clock is None:
        return
    from lightning.pytorch.callbacks import Timer

    timers = [c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None]
    if not timers:
        raise ValueError("stage.lr_scheduler.time_budget=true needs trainer.max_time, the budget the cosine spans; "
                         "set trainer.max_time or time_budget=false")
    if trainer.world_size > 1:
        raise ValueError(f"a time-budgeted schedule needs one process ({trainer.world_size} would read different "
                         "clocks and diverge); use stage.lr_scheduler.time_budget=false with a step budget")
    clock.timer = timers[0]
