"""Noise schedules in continuous time, written as log-SNR curves (VDM, Kingma et al. 2021).

Time t runs over [0, 1]: t = 0 is clean data, t = 1 is (almost) pure noise. Every schedule is a decreasing
log_snr(t); alpha and sigma follow from it, with alpha^2 + sigma^2 = 1 (variance preserving).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class LogSNRSchedule:
    """Variance-preserving schedule given by its log-SNR, log(alpha^2 / sigma^2) (Imagen App. A)."""

    def log_snr(self, t: Tensor) -> Tensor:
        """log(alpha_t^2 / sigma_t^2); subclasses define it."""
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr), via logsigmoid so no end underflows."""
        log_snr = self.log_snr(t)
        alpha = torch.exp(0.5 * F.logsigmoid(log_snr))
        sigma = torch.exp(0.5 * F.logsigmoid(-log_snr))
        return alpha, sigma

    def t_at(self, log_snr: Tensor, iters: int = 60) -> Tensor:
        """The t whose log-SNR is `log_snr` (clamped to [0, 1]), by bisection: every schedule is decreasing in t."""
        target = torch.as_tensor(log_snr, dtype=torch.float32)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid).float() > target  # still cleaner than the target: go noisier
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


class CosineSchedule(LogSNRSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021) in continuous form: log_snr = -2 log tan(a t + b)."""

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 0.0):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
        self.logsnr_min = logsnr_min
        self.logsnr_max = logsnr_max
        self.shift = shift
        # tan(b) = exp(-logsnr_max / 2) puts logsnr_max at t = 0; a stretches t = 1 onto logsnr_min.
        self.b = math.atan(math.exp(-0.5 * logsnr_max))
        self.a = math.atan(math.exp(-0.5 * logsnr_min)) - self.b

    def log_snr(self, t: Tensor) -> Tensor:
        """Nichol & Dhariwal 2021 cosine schedule, log-SNR form (VDM, Kingma et al. 2021 App. B), plus `shift`.

        shift = 2 log(ref / resolution) is Hoogeboom et al. 2023's resolution shift (simple diffusion Sec. 3.1):
        negative for images larger than the reference (more noise), positive for smaller ones.
        """
        return -2.0 * torch.log(torch.tan(self.a * t.float() + self.b)) + self.shift

    def __repr__(self) -> str:
        return f"CosineSchedule(logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, shift={self.shift})"


class LinearSchedule(LogSNRSchedule):
    """Continuous-time limit of DDPM's linear betas (Ho et al. 2020 Sec. 4), log-SNR clipped at logsnr_max."""

    def __init__(
        self,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_timesteps: int = 1000,
        logsnr_max: float = 20.0,
    ):
        if not 0 < beta_start <= beta_end:
            raise ValueError(f"need 0 < beta_start <= beta_end, got {beta_start} and {beta_end}")
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.num_timesteps = num_timesteps
        self.logsnr_max = logsnr_max

    def log_snr(self, t: Tensor) -> Tensor:
        """-log expm1(-log alpha_bar) with -log alpha_bar = T (b0 t + (b1 - b0) t^2 / 2) (Ho et al. 2020)."""
        t = t.float()
        neg_log_alpha_bar = self.num_timesteps * (self.beta_start * t + 0.5 * (self.beta_end - self.beta_start) * t**2)
        # At t = 0 the true log-SNR is +inf; the clip keeps sigma > 0, so (x_t - alpha x0) / sigma is finite.
        return (-torch.log(torch.expm1(neg_log_alpha_bar))).clamp(max=self.logsnr_max)

    def __repr__(self) -> str:
        return (
            f"LinearSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, "
            f"num_timesteps={self.num_timesteps}, logsnr_max={self.logsnr_max})"
        )


SCHEDULES = {"cosine": CosineSchedule, "linear": LinearSchedule}


def get_schedule(name: str, **kwargs) -> LogSNRSchedule:
    """Build a schedule by name ("cosine" or "linear")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
