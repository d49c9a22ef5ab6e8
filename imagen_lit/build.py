"""Build stages and encoders from Hydra configs, and load them back from checkpoints."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imagen_lit.stages.base import BaseStage
from imagen_lit.stages.callbacks import CHECKPOINT_CONFIG_KEY
from imagen_lit.text import FrozenTextEncoder


def build_stage(cfg: DictConfig, text_dim: int) -> BaseStage:
    """Instantiate the U-Net (with the encoder's width), the diffusion core and the stage around them."""
    unet = instantiate(cfg.unet, text_dim=text_dim)
    diffusion = instantiate(cfg.diffusion)
    return instantiate(cfg.stage, unet=unet, diffusion=diffusion)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on CPU, with an error that names the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err


def load_stage(ckpt_path: str | Path) -> tuple[BaseStage, FrozenTextEncoder, DictConfig]:
    """Rebuild the stage and its text encoder from a train.py checkpoint, weights included."""
    checkpoint = read_checkpoint(ckpt_path)
    if CHECKPOINT_CONFIG_KEY not in checkpoint:
        raise ValueError(f"checkpoint {ckpt_path} has no '{CHECKPOINT_CONFIG_KEY}': was it written by train.py?")
    cfg = OmegaConf.create(checkpoint[CHECKPOINT_CONFIG_KEY])
    text_encoder = instantiate(cfg.text_encoder)
    stage = build_stage(cfg, text_encoder.dim)
    stage.load_state_dict(checkpoint["state_dict"])
    return stage.eval(), text_encoder, cfg
