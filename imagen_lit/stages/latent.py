"""Latent diffusion for the base stage (Rombach et al. 2022; not in Imagen, which diffuses pixels): an autoencoder
stage, then a base stage that diffuses its frozen latents and decodes its samples.

    python train.py experiment=quickstart_autoencoder hydra.run.dir=<ae>
    python train.py experiment=quickstart_latent stage.autoencoder_ckpt=<ae>/checkpoints/last.ckpt
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from imagen_lit.checkpoint import read_checkpoint
from imagen_lit.models.autoencoder import ImageAutoencoder
from imagen_lit.stages.base import BaseStage
from imagen_lit.stages.console import expect_eval_modules
from imagen_lit.stages.flops import count_flops
from imagen_lit.stages.optim import attach_budget_clock

AUTOENCODER_PREFIX = "autoencoder."


class AutoencoderStage(L.LightningModule):
    """Trains an ImageAutoencoder on the data module's images; keeps its latent_scale at 1 / the latents' std."""

    def __init__(self, autoencoder: ImageAutoencoder, optimizer: Callable[[Iterable[nn.Parameter]], Any],
                 lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None, scale_momentum: float = 0.99):
        super().__init__()
        self.autoencoder = autoencoder
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scale_momentum = scale_momentum
        self.register_buffer("latent_var", torch.zeros(()))  # running mean of the unscaled latents' variance
        self.flops_per_batch: int | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["images"].float()
        loss = self.autoencoder.loss(images)
        with torch.no_grad():  # the scale the base stage's diffusion will see: unit-variance latents
            var = self.autoencoder.encoder(images).float().var()
            momentum = self.scale_momentum if self.latent_var > 0 else 0.0
            self.latent_var.mul_(momentum).add_((1 - momentum) * var)
            self.autoencoder.latent_scale.copy_(self.latent_var.clamp(min=1e-12).rsqrt())
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train/latent_scale", self.autoencoder.latent_scale, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.autoencoder.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if self._trainer is not None:
            attach_budget_clock(scheduler, self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_autoencoder_weights(autoencoder: ImageAutoencoder, ckpt_path: str | Path) -> None:
    """The weights of an experiment=quickstart_autoencoder checkpoint (or a plain state dict) into `autoencoder`."""
    checkpoint = read_checkpoint(ckpt_path)
    state = checkpoint.get("state_dict", checkpoint)
    weights = {k.removeprefix(AUTOENCODER_PREFIX): v for k, v in state.items() if k.startswith(AUTOENCODER_PREFIX)}
    autoencoder.load_state_dict(weights or state)


class LatentBaseStage(BaseStage):
    """The base stage over a frozen autoencoder's latents: the U-Net's image_size and channels are the latents';
    training encodes each batch, and `generate` decodes the sampled latents to images in [-1, 1].

    autoencoder_ckpt: where its weights come from (an experiment=quickstart_autoencoder checkpoint); loaded when the
    file exists. A checkpoint of this stage holds them as well, so sampling and resuming need no other file.
    Other arguments are BaseStage's.
    """

    def __init__(self, unet: nn.Module | Callable[[], nn.Module], diffusion: Any, *, autoencoder: ImageAutoencoder,
                 autoencoder_ckpt: str | None = None, **kwargs: Any):
        super().__init__(unet, diffusion, **kwargs)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.register_buffer("autoencoder_loaded", torch.zeros((), dtype=torch.bool))
        self.autoencoder_ckpt = autoencoder_ckpt
        if autoencoder_ckpt is not None and Path(autoencoder_ckpt).is_file():
            load_autoencoder_weights(self.autoencoder, autoencoder_ckpt)
            self.autoencoder_loaded.fill_(True)

    @property
    def image_size(self) -> int:
        """The side of the decoded images: the U-Net's latent side times the autoencoder's factor."""
        return self.unet.image_size * self.autoencoder.factor

    def on_fit_start(self) -> None:
        if not bool(self.autoencoder_loaded):
            path = self.autoencoder_ckpt
            raise FileNotFoundError(f"no trained autoencoder at stage.autoencoder_ckpt={path!r}: train one with "
                                    "experiment=quickstart_autoencoder and pass its checkpoints/last.ckpt")
        super().on_fit_start()
        if self.ema is not None:  # the EMA copy and the frozen autoencoder are in eval mode by design
            expect_eval_modules(len(list(self.ema.module.modules())) + len(list(self.autoencoder.modules())))

    def train(self, mode: bool = True) -> LatentBaseStage:
        """The frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    def diffusion_target(self, images: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The latents of the images (Rombach et al. 2022 Sec. 3): [B, 3, H, W] -> [B, C, H / f, W / f]."""
        with torch.no_grad():
            return self.autoencoder.encode(images).float()

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.flops_per_batch is None:  # the U-Net's FLOPs on latents (the encoder's are ~3% of them)
            images = batch["images"]
            f = self.autoencoder.factor
            latents = images.new_empty(images.shape[0], self.autoencoder.latent_channels, images.shape[-2] // f,
                                       images.shape[-1] // f)  # [B, C, H / f, W / f]
            self.flops_per_batch = count_flops(self, {**batch, "images": latents})
        super().on_train_batch_start(batch, batch_idx)

    @torch.no_grad()
    def generate(self, text_embeds: Tensor, text_mask: Tensor, **kwargs: Any) -> Tensor:
        """Sample latents as BaseStage.generate does, then decode them to images in [-1, 1]."""
        latents = super().generate(text_embeds, text_mask, **kwargs)
        return self.autoencoder.decode(latents.to(self.autoencoder.latent_scale.dtype)).clamp(-1.0, 1.0)
