"""A base stage sampled by two noise-level experts (eDiff-I, Balaji et al. 2022 Sec. 4): one trained stage owns the
noisy levels (layout, the relation between objects), the other the clean ones (shapes, edges).

    experts = ExpertPair(low_noise_stage, high_noise_stage, switch_log_snr=0.0)
    images = experts.generate(text_embeds, text_mask, generator=g)      # BaseStage.generate's signature

Each expert keeps its own stored guidance and thresholding; settings given to generate apply to both, and
high_noise_sampling to the high-noise one alone. The sampler, its steps and its time grid are the low-noise stage's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from imagen_lit.diffusion.experts import switch_denoiser
from imagen_lit.models.text_cache import text_cache
from imagen_lit.stages.base import BaseStage, run_settings, start_noise


class ExpertPair:
    """Two base stages as one: high_noise samples below switch_log_snr, low_noise at or above it."""

    def __init__(self, low_noise: BaseStage, high_noise: BaseStage, switch_log_snr: float = 0.0,
                 high_noise_sampling: dict[str, Any] | None = None):
        for name, stage in (("low_noise", low_noise), ("high_noise", high_noise)):
            if not isinstance(stage, BaseStage) or getattr(stage, "scale", None):
                raise ValueError(f"{name} must be a text-to-image base stage (not a super-resolution one)")
        low_size, high_size = low_noise.image_size, high_noise.image_size
        if low_size != high_size:
            raise ValueError(f"the experts sample at {low_size} and {high_size}: train both at one data.resolution")
        self.low_noise, self.high_noise = low_noise, high_noise
        self.switch_log_snr = float(switch_log_snr)
        self.high_noise_sampling = dict(high_noise_sampling or {})
        high_noise.checked_sampling(self.high_noise_sampling)  # a misspelled key fails before any sampling

    @property
    def unet(self) -> torch.nn.Module:
        return self.low_noise.unet

    @property
    def image_size(self) -> int:
        return self.low_noise.image_size

    @property
    def device(self) -> torch.device:
        return self.low_noise.device

    @property
    def sampling(self) -> dict[str, Any]:
        """The low-noise stage's settings, which also set the sampler, with the pair's own keys added."""
        return {**self.low_noise.sampling, "switch_log_snr": self.switch_log_snr,
                "high_noise": high_noise_settings(self.high_noise, {}, self.high_noise_sampling)}

    def to(self, device: torch.device | str) -> ExpertPair:
        self.low_noise.to(device)
        self.high_noise.to(device)
        return self

    @torch.no_grad()
    def generate(
        self,
        text_embeds: Tensor,
        text_mask: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Images in [-1, 1] for text embeds [B, L, D] and mask [B, L]; `sampling` overrides the low-noise stage's."""
        low, high = self.low_noise, self.high_noise
        settings = low.sampling_settings(sampling)
        low_net, high_net = low.sampling_net(use_ema), high.sampling_net(use_ema)
        text_embeds, text_mask = text_embeds.to(self.device), text_mask.to(self.device)
        noise = start_noise(low_net, text_embeds.shape[0], None, generator, text_embeds.device)
        high_settings = high_noise_settings(high, sampling, self.high_noise_sampling)
        denoise = switch_denoiser(
            low.denoiser(low_net, text_embeds, text_mask, settings),
            high.denoiser(high_net, text_embeds, text_mask, high_settings),
            low.diffusion.schedule, high.diffusion.schedule, self.switch_log_snr,
        )
        with text_cache(low_net), text_cache(high_net):
            return low.diffusion.run_sampler(denoise, noise, generator=generator, callback=callback,
                                             disable=not progress, **run_settings(settings))


def high_noise_settings(high: BaseStage, sampling: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The high-noise expert's settings: its stored ones, then those given to both, then its own overrides."""
    return high.sampling_settings({**sampling, **own})
