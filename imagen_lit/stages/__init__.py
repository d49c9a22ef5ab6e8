"""Cascade stages as thin LightningModules over the shared diffusion core."""

from imagen_lit.stages.base import BaseStage
from imagen_lit.stages.optim import linear_warmup, warmup_cosine
from imagen_lit.stages.sr import SRStage

__all__ = ["BaseStage", "SRStage", "linear_warmup", "warmup_cosine"]
