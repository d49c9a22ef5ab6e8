"""Cascade stages as thin LightningModules over the shared diffusion core."""

from imagen_lit.stages.base import BaseStage
from imagen_lit.stages.optim import linear_warmup

__all__ = ["BaseStage", "linear_warmup"]
