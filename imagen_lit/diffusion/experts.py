"""Noise-level experts: two denoisers that split the noise range between them (eDiff-I, Balaji et al. 2022 Sec. 4).

Layout and the relation between objects are set at high noise, shapes and edges at low noise; one network trained
on one loss over the whole range has to trade them off. An expert pair gives each range its own network, trained on
its own log-SNR interval (`GaussianDiffusion(log_snr_range=...)`) and loss, and the sampler calls whichever owns the
current level. Plain torch: the denoisers are closures (x_t, t) -> x0_hat, as the samplers take them.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from imagen_lit.diffusion.schedules import LogSNRSchedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


def switch_denoiser(
    low_noise: Denoiser,
    high_noise: Denoiser,
    schedule: LogSNRSchedule,
    high_noise_schedule: LogSNRSchedule,
    switch_log_snr: float = 0.0,
) -> Denoiser:
    """denoise(x_t, t) in `schedule`'s time: high_noise below switch_log_snr, low_noise at or above it.

    The high-noise expert may have trained on another schedule (a resolution shift): it is called at its own time
    of the same log-SNR, so both see x_t = alpha x0 + sigma eps with the alpha and sigma they were trained on.
    """

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        log_snr = schedule.log_snr(t).float()  # (B,)
        noisy = log_snr < switch_log_snr
        if not bool(noisy.any()):
            return low_noise(x_t, t)
        t_high = high_noise_schedule.t_at(log_snr).to(t.dtype)
        if bool(noisy.all()):
            return high_noise(x_t, t_high)
        out = low_noise(x_t[~noisy], t[~noisy])
        merged = torch.empty((x_t.shape[0], *out.shape[1:]), dtype=out.dtype, device=out.device)
        merged[~noisy] = out
        merged[noisy] = high_noise(x_t[noisy], t_high[noisy]).to(out.dtype)
        return merged

    return denoise
