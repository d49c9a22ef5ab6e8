"""A small convolutional autoencoder whose latents a base stage can diffuse instead of pixels (not in Imagen: the
latent-diffusion lever of Rombach et al. 2022, for bases that are bound by steps per CPU minute)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen_lit.models.layers import Downsample, ResBlock, Upsample, group_norm


class ImageAutoencoder(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] <-> latents [B, latent_channels, H / f, W / f], f = 2^(len(channels) - 1).

    `latent_scale` (a buffer, set by `fit_latent_scale`) scales the encoder's output to unit variance, so the
    diffusion's noise levels mean for latents what they mean for pixels (Rombach et al. 2022 Sec. 4.3.2).
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, channels: Sequence[int] = (32, 64, 128),
                 latent_penalty: float = 1e-4):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs >= 2 levels (one downsampling), got {list(channels)}")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.factor = 2 ** (len(channels) - 1)
        self.latent_penalty = latent_penalty
        enc: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for i, ch in enumerate(channels):
            enc.append(ResBlock(channels[max(0, i - 1)] if i else ch, ch, None))
            if i < len(channels) - 1:
                enc.append(Downsample(ch, ch))
        enc += [group_norm(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        rev = list(reversed(channels))
        for i, ch in enumerate(rev):
            dec.append(ResBlock(rev[max(0, i - 1)] if i else ch, ch, None))
            if i < len(rev) - 1:
                dec.append(Upsample(ch, ch))
        dec += [group_norm(rev[-1]), nn.SiLU(), nn.Conv2d(rev[-1], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_scale", torch.ones(()))

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents of images in [-1, 1]."""
        if images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by the autoencoder's factor "
                             f"{self.factor}; use a resolution that is")
        return self.encoder(images) * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """Images (unclamped, ~[-1, 1]) of scaled latents."""
        return self.decoder(latents / self.latent_scale)

    def loss(self, images: Tensor) -> Tensor:
        """Reconstruction L1 + MSE, plus a small penalty on the unscaled latents' magnitude that keeps them bounded."""
        z = self.encoder(images)
        recon = self.decoder(z)
        return F.l1_loss(recon, images) + F.mse_loss(recon, images) + self.latent_penalty * z.pow(2).mean()

    @torch.no_grad()
    def fit_latent_scale(self, images: Tensor) -> float:
        """Set latent_scale to 1 / std of the unscaled latents of these images; returns it."""
        std = self.encoder(images).float().std().clamp(min=1e-6)
        self.latent_scale.fill_(1.0 / std)
        return float(self.latent_scale)
