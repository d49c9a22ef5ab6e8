"""Samplers as plain functions with one signature (k-diffusion style), in continuous time t in [0, 1].

    sample_xxx(denoise, x, ts, schedule, *, generator=None, callback=None, disable=True, **kw) -> Tensor

denoise(x_t, t) -> x0_hat is the guided, thresholded data prediction; eps_hat = (x_t - alpha x0_hat) / sigma.
ts is a descending grid from 1 to 0 (see time_grid). The state is kept in float32 whatever x's dtype; the
network sees it in x's dtype, and the result comes back in it.
"""

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import trange

from imagen_lit.diffusion.schedules import LogSNRSchedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """Uniform descending grid t_max = t_0 > ... > t_steps = t_min (steps + 1 points)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not t_max > t_min:
        raise ValueError(f"need t_max > t_min, got t_max={t_max}, t_min={t_min}")
    return torch.linspace(t_max, t_min, steps + 1)


def _check_ts(ts: Tensor) -> None:
    if ts.dim() != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-D grid of >= 2 times (see time_grid), got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly descending, from noise (t=1) to data (t=0)")


def _coeffs(schedule: LogSNRSchedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log_snr, alpha, sigma) at t, in float32."""
    alpha, sigma = schedule.alpha_sigma(t)
    return schedule.log_snr(t).float(), alpha.float(), sigma.float()


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) drawn on the generator's device (a CPU generator also serves CUDA samples), then moved to x's."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _denoise(denoise: Denoiser, x: Tensor, t: Tensor, dtype: torch.dtype) -> Tensor:
    """Call the denoiser with the network's dtype and a per-sample time vector; return x0_hat in float32."""
    t_batch = t.expand(x.shape[0]).contiguous()  # (B,)
    return denoise(x.to(dtype), t_batch).float()


def _prepare(x: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
    _check_ts(ts)
    return x.float(), ts.to(device=x.device, dtype=torch.float32)


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    schedule: LogSNRSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool = True,
) -> Tensor:
    """Ancestral sampling from q(x_s | x_t, x0_hat) (DDPM; continuous time as in VDM, Kingma et al. 2021)."""
    dtype = x.dtype
    x, ts = _prepare(x, ts)
    last = len(ts) - 2
    for i in trange(len(ts) - 1, disable=disable):
        t, s = ts[i], ts[i + 1]
        log_snr_t, alpha_t, _ = _coeffs(schedule, t)
        log_snr_s, alpha_s, sigma_s = _coeffs(schedule, s)
        x0 = _denoise(denoise, x, t, dtype)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "x0": x0})
        c = -torch.expm1(log_snr_t - log_snr_s)  # 1 - SNR_t / SNR_s, in (0, 1]
        mean = alpha_s * ((1 - c) * x / alpha_t + c * x0)
        if i == last:
            x = mean
        else:
            x = mean + (sigma_s**2 * c).sqrt() * _randn_like(x, generator)
    return x.to(dtype)


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    schedule: LogSNRSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - sigma_eta^2) eps + sigma_eta z (DDIM, Song et al. 2021 Eq. 12)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = ancestral variance), got {eta}")
    dtype = x.dtype
    x, ts = _prepare(x, ts)
    last = len(ts) - 2
    for i in trange(len(ts) - 1, disable=disable):
        t, s = ts[i], ts[i + 1]
        log_snr_t, alpha_t, sigma_t = _coeffs(schedule, t)
        log_snr_s, alpha_s, sigma_s = _coeffs(schedule, s)
        x0 = _denoise(denoise, x, t, dtype)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "x0": x0})
        eps = (x - alpha_t * x0) / sigma_t
        c = -torch.expm1(log_snr_t - log_snr_s)
        sigma_eta = eta * sigma_s * c.sqrt()
        x = alpha_s * x0 + (sigma_s**2 - sigma_eta**2).clamp(min=0).sqrt() * eps
        # No noise if deterministic or on the last step, as in sample_ddpm: eta=1 then matches it exactly.
        if eta > 0 and i != last:
            x = x + sigma_eta * _randn_like(x, generator)
    return x.to(dtype)


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    schedule: LogSNRSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool = True,
) -> Tensor:
    """DPM-Solver++(2M): data prediction, multistep in lambda = log_snr / 2 (Lu et al. 2022 Alg. 2)."""
    del generator  # deterministic; the argument keeps the shared signature
    dtype = x.dtype
    x, ts = _prepare(x, ts)
    last = len(ts) - 2
    x0_prev, h_prev = None, None
    for i in trange(len(ts) - 1, disable=disable):
        t, s = ts[i], ts[i + 1]
        log_snr_t, _, sigma_t = _coeffs(schedule, t)
        log_snr_s, alpha_s, sigma_s = _coeffs(schedule, s)
        x0 = _denoise(denoise, x, t, dtype)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "x0": x0})
        h = 0.5 * (log_snr_s - log_snr_t)  # step in lambda = log(alpha / sigma)
        if x0_prev is None or i == last:
            d = x0  # first order (DPM-Solver++(1) = DDIM) on the first and last step
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma_s / sigma_t) * x - alpha_s * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x.to(dtype)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look a sampler up by name (ddpm, ddim, dpmpp_2m)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
