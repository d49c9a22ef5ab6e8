"""Noise conditioning augmentation for super-resolution stages (Imagen Sec. 2.4, App. D.2).

The low-res conditioning image is corrupted by the diffusion forward process itself, z = alpha(s) x + sigma(s) eps
at t = s = aug_level, and s is given to the network. Training draws s ~ U(0, 1) per sample (or U(0, max_aug_level),
so the stage keeps relying on its input; not in the paper); sampling uses one fixed s (0.3 by default, Imagen
Fig. A.12). The image is noised at its own (low) resolution, before the U-Net upsamples it, so the noise hides
exactly the scale at which the previous stage's artefacts live.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imagen_lit.diffusion.schedules import LogSNRSchedule


def check_aug_level(aug_level: float) -> None:
    """Raise ValueError unless 0 <= aug_level <= 1 (a time of the forward process)."""
    if not 0.0 <= aug_level <= 1.0:
        raise ValueError(f"aug_level must be in [0, 1] (0 = clean low-res image, 1 = pure noise), got {aug_level}")


def sample_aug_level(
    batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
    max_aug_level: float = 1.0,
) -> Tensor:
    """aug_level ~ U(0, max_aug_level) per sample, the training distribution (Imagen Sec. 2.4: U(0, 1))."""
    gen_device = device if generator is None else generator.device
    return torch.rand(batch, generator=generator, device=gen_device).to(device) * max_aug_level  # x 1.0 is exact


def noise_augment(
    lowres: Tensor,
    aug_level: Tensor,
    schedule: LogSNRSchedule,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """q(z_s | x) at s = aug_level [B]: alpha_s lowres + sigma_s eps, the forward process (Imagen Sec. 2.4)."""
    if aug_level.dim() != 1 or aug_level.shape[0] != lowres.shape[0]:
        raise ValueError(f"aug_level must be [B={lowres.shape[0]}], one level per image, got {tuple(aug_level.shape)}")
    if noise is None:
        gen_device = lowres.device if generator is None else generator.device
        noise = torch.randn(lowres.shape, generator=generator, device=gen_device).to(lowres.device)
    alpha, sigma = schedule.alpha_sigma(aug_level.to(lowres.device))
    alpha, sigma = (c.reshape(-1, 1, 1, 1) for c in (alpha, sigma))  # (B,) -> (B, 1, 1, 1)
    return (alpha * lowres.float() + sigma * noise.float()).to(lowres.dtype)
