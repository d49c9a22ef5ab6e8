"""The EMA of a stage's U-Net (Imagen App. F: EMA decay 0.9999), on both of its paths.

- Plain Lightning: an EMA submodule of the stage (`stage.ema`): moved, saved and loaded with it (keys `ema.*`).
- DeepSpeed: the engine would cast a submodule to bf16 and, under ZeRO-3, shard it, so the EMA lives here instead,
  fp32, made at fit start (sharded like the weights under ZeRO-3) and carried in the checkpoint's client state.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from imagen_lit.models.ema import EMA, ShardedEMA, is_zero3_partitioned
from imagen_lit.zero_checkpoint import DEEPSPEED_EMA_KEY


class StageAverage:
    """Owns the DeepSpeed-path EMA and the bookkeeping of both paths; the stage keeps its `ema` submodule."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.outside: EMA | ShardedEMA | None = None  # the DeepSpeed path's EMA: never a submodule of the stage
        self._pending: dict[str, Any] | None = None  # its state from a checkpoint read before it exists

    def submodule(self, unet: nn.Module, under_deepspeed: bool) -> EMA | None:
        """The EMA submodule for the plain path; None under DeepSpeed (see on_fit_start)."""
        return None if under_deepspeed else EMA(unet, decay=self.decay)

    def on_fit_start(self, unet: nn.Module, under_deepspeed: bool) -> None:
        """Under DeepSpeed: make the fp32 EMA (sharded under ZeRO-3), with the checkpoint's state if one was read."""
        if not under_deepspeed:
            return
        ema = ShardedEMA(unet, decay=self.decay) if is_zero3_partitioned(unet) else EMA(unet, decay=self.decay).float()
        if self._pending is not None:
            ema.load_state_dict(self._pending)
            self._pending = None
        self.outside = ema

    def current(self, submodule: EMA | None) -> EMA | ShardedEMA | None:
        """The EMA in use: the DeepSpeed path's, else the submodule."""
        return self.outside or submodule

    def update(self, submodule: EMA | None, unet: nn.Module) -> None:
        """One EMA step after an optimizer step."""
        self.current(submodule).update(unet)

    def save(self, checkpoint: dict[str, Any]) -> None:
        """Client state: rank 0's EMA under ZeRO-2, every rank's shard under ZeRO-3 (the plain path's is in the
        state dict)."""
        if self.outside is not None:
            checkpoint[DEEPSPEED_EMA_KEY] = self.outside.state_dict()

    def load(self, checkpoint: dict[str, Any]) -> None:
        if DEEPSPEED_EMA_KEY not in checkpoint:
            return
        if self.outside is not None:
            self.outside.load_state_dict(checkpoint[DEEPSPEED_EMA_KEY])
        else:  # DeepSpeed restores before on_fit_start makes the EMA
            self._pending = checkpoint[DEEPSPEED_EMA_KEY]
