"""Build stages and encoders from Hydra configs, and load them back from checkpoints."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imagen_lit.checkpoint import read_checkpoint
from imagen_lit.stages.base import BaseStage
from imagen_lit.stages.callbacks import CHECKPOINT_CONFIG_KEY
from imagen_lit.stages.experts import ExpertPair
from imagen_lit.text import FrozenTextEncoder
from imagen_lit.zero_checkpoint import read_deepspeed_checkpoint


def build_stage(cfg: DictConfig, text_dim: int, deferred: bool = False) -> BaseStage:
    """Instantiate the U-Net (with the encoder's width), the diffusion core and the stage around them.

    deferred=True hands the stage a U-Net factory that Lightning calls in `configure_model`, so DeepSpeed ZeRO-3
    shards the weights as they are created.
    """
    if cfg.get("unet") is None:  # a stage that builds its own network (the latent autoencoder, stage.autoencoder)
        return instantiate(cfg.stage)
    unet = instantiate(cfg.unet, text_dim=text_dim, _partial_=deferred)
    diffusion = instantiate(cfg.diffusion)
    return instantiate(cfg.stage, unet=unet, diffusion=diffusion)


def read_stage_checkpoint(ckpt_path: str | Path) -> tuple[dict, DictConfig]:
    """(checkpoint dict, its train.py config) of a plain checkpoint file or a DeepSpeed checkpoint folder."""
    checkpoint = read_deepspeed_checkpoint(ckpt_path) if Path(ckpt_path).is_dir() else read_checkpoint(ckpt_path)
    if CHECKPOINT_CONFIG_KEY not in checkpoint:
        raise ValueError(f"checkpoint {ckpt_path} has no '{CHECKPOINT_CONFIG_KEY}': was it written by train.py?")
    return checkpoint, OmegaConf.create(checkpoint[CHECKPOINT_CONFIG_KEY])


def stage_from_checkpoint(checkpoint: dict, cfg: DictConfig, text_dim: int) -> BaseStage:
    """Rebuild the stage of a read checkpoint, weights included, in eval mode."""
    stage = build_stage(cfg, text_dim)
    stage.load_state_dict(checkpoint["state_dict"])
    return stage.eval()


def load_stage(ckpt_path: str | Path) -> tuple[BaseStage, FrozenTextEncoder, DictConfig]:
    """Rebuild the stage and its text encoder from a train.py checkpoint, weights included."""
    checkpoint, cfg = read_stage_checkpoint(ckpt_path)
    text_encoder = instantiate(cfg.text_encoder)
    return stage_from_checkpoint(checkpoint, cfg, text_encoder.dim), text_encoder, cfg


def load_base(ckpt_path: str | Path, high_noise_expert: str | Path | None = None, switch_log_snr: float = 0.0,
              high_noise_sampling: dict | None = None) -> tuple[BaseStage | ExpertPair, FrozenTextEncoder, DictConfig]:
    """load_stage, or with high_noise_expert an ExpertPair of the two checkpoints (ckpt_path the low-noise one)."""
    stage, text_encoder, cfg = load_stage(ckpt_path)
    if high_noise_expert is None:
        return stage, text_encoder, cfg
    checkpoint, high_cfg = read_stage_checkpoint(high_noise_expert)
    if OmegaConf.to_container(high_cfg.text_encoder) != OmegaConf.to_container(cfg.text_encoder):
        raise ValueError(f"the experts were trained on different text encoders ({cfg.text_encoder.get('name_or_path')} "
                         f"and {high_cfg.text_encoder.get('name_or_path')}): pair checkpoints of one encoder")
    high = stage_from_checkpoint(checkpoint, high_cfg, text_encoder.dim)
    return ExpertPair(stage, high, switch_log_snr, high_noise_sampling), text_encoder, cfg
