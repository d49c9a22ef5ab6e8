"""The Gaussian noising process, its training loss and the sampling entry point (Imagen Sec. 2, App. A)."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from imagen_lit.diffusion.guidance import check_guidance_interval, check_guidance_weight, guided_model_fn
from imagen_lit.diffusion.noise_levels import WeightedNoiseLevels
from imagen_lit.diffusion.samplers import get_sampler, time_grid
from imagen_lit.diffusion.schedules import LogSNRSchedule
from imagen_lit.diffusion.thresholding import check_thresholding, threshold_x0

PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("none", "min_snr")
NOISE_LEVEL_SAMPLINGS = ("uniform", "weighted")


def check_sampling_options(
    sampler: str | None = None,
    steps: int = 50,
    guidance_weight: float = 1.0,
    thresholding: str = "dynamic",
    percentile: float = 0.995,
    eta: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
) -> None:
    """Validate sampling settings before any work is done (sampler None: only the other keys are given);
    ValueError that says what is allowed."""
    if sampler is not None:
        get_sampler(sampler)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps} (an integer number of sampling steps)")
    check_guidance_weight(guidance_weight)
    check_guidance_interval(guidance_interval)
    check_thresholding(thresholding, percentile)
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = ancestral variance), got {eta}")
    if eta != 0 and sampler not in (None, "ddim"):
        raise ValueError(f"eta={eta} has no meaning for sampler {sampler!r} (ddpm is ancestral, dpmpp_2m "
                         f"deterministic): use sampler=ddim or leave eta at 0")


def _expand(coef: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast over every non-batch dim of `like`."""
    return coef.reshape(-1, *([1] * (like.dim() - 1)))


def _gen_device(generator: torch.Generator | None, device: torch.device | str | None):
    """Draw on the generator's own device, so a CPU generator also seeds CUDA training; move afterwards."""
    return device if generator is None else generator.device


class GaussianDiffusion:
    """Continuous-time Gaussian diffusion (Imagen Sec. 2, App. A).

    Takes the network as an argument, never owns it. Time t is in [0, 1] (t = 0 clean); `prediction`
    names what the network regresses: eps, v or x0.
    """

    def __init__(
        self,
        schedule: LogSNRSchedule,
        prediction: str = "eps",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        min_snr_floor: float = 0.0,
        multiscale_weights: Sequence[float] = (1.0,),
        log_snr_range: Sequence[float | None] | None = None,
        noise_level_sampling: str = "uniform",
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        if not 0 <= min_snr_floor <= min_snr_gamma:
            raise ValueError(f"min_snr_floor must be in [0, min_snr_gamma={min_snr_gamma}], got {min_snr_floor}")
        if min_snr_floor > 0 and prediction == "eps":
            raise ValueError("min_snr_floor > 0 weighs eps-MSE by floor / SNR at high noise (unbounded); use "
                             "prediction=v or x0")
        if noise_level_sampling not in NOISE_LEVEL_SAMPLINGS:
            raise ValueError(f"unknown noise_level_sampling {noise_level_sampling!r}; choose one of "
                             f"{', '.join(NOISE_LEVEL_SAMPLINGS)}")
        weights = [float(w) for w in multiscale_weights]
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"multiscale_weights must be >= 0 with a positive sum (one per halving, [1.0] = plain "
                             f"MSE), got {list(multiscale_weights)}")
        self.schedule = schedule
        self.log_snr_range, self.t_range = self._t_range(log_snr_range)
        self.prediction = prediction
        self.multiscale_weights = weights
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.min_snr_floor = min_snr_floor
        self.noise_level_sampling = noise_level_sampling
        self._weighted_levels = (
            WeightedNoiseLevels(self.loss_weight, self.t_range) if noise_level_sampling == "weighted" else None
        )

    def _t_range(self, log_snr_range) -> tuple[tuple[float | None, float | None] | None, tuple[float, float]]:
        """[min, max] log-SNR an expert trains on (None ends: unbounded) -> the t interval it spans."""
        if log_snr_range is None:
            return None, (0.0, 1.0)
        try:
            lo, hi = (None if v is None else float(v) for v in log_snr_range)
        except (TypeError, ValueError):
            raise ValueError(f"log_snr_range must be [min, max] (null for an open end) or null, "
                             f"got {log_snr_range!r}") from None
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"log_snr_range must have min < max, got [{lo}, {hi}]")
        t_lo = 0.0 if hi is None else float(self.schedule.t_at(torch.tensor(hi)))  # the clean end: small t
        t_hi = 1.0 if lo is None else float(self.schedule.t_at(torch.tensor(lo)))
        if not t_hi - t_lo > 1e-6:
            raise ValueError(f"log_snr_range [{lo}, {hi}] spans no noise level of {self.schedule!r}; widen it")
        return (lo, hi), (t_lo, t_hi)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(schedule={self.schedule!r}, prediction={self.prediction!r}, "
                f"loss_weighting={self.loss_weighting!r}, min_snr_floor={self.min_snr_floor}, "
                f"multiscale_weights={self.multiscale_weights}, log_snr_range={self.log_snr_range}, "
                f"noise_level_sampling={self.noise_level_sampling!r})")

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample weight [B] of the target's MSE; min_snr: the x0-MSE weight min(SNR, gamma) (Hang et al. 2023).

        In x0 terms eps-MSE weighs SNR and v-MSE weighs SNR + 1, so the target's MSE is scaled by
        min(SNR, gamma) / SNR, / (SNR + 1) or / 1, so nearly clean levels stop dominating the gradient. The noisiest
        levels, where layout is decided, then weigh SNR -> 0 in x0 terms; min_snr_floor f > 0 (not in Hang et al.)
        lifts that to clamp(SNR, f, gamma): f = 1 keeps v-MSE's own weight there (SNR + 1 ~ 1).
        """
        if self.loss_weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        snr = torch.exp(self.schedule.log_snr(t).float())
        clipped = snr.clamp(min=self.min_snr_floor, max=self.min_snr_gamma)
        return clipped / self._target_per_x0(snr)

    def x0_weight(self, t: Tensor) -> Tensor:
        """Weight [B] the training loss puts on the x0 MSE at t: loss_weight x (target MSE per x0 MSE)."""
        return self.loss_weight(t) * self._target_per_x0(torch.exp(self.schedule.log_snr(t).float()))

    def _target_per_x0(self, snr: Tensor) -> Tensor:
        """The target's MSE per unit of x0 MSE: SNR (eps), SNR + 1 (v, Salimans & Ho 2022) or 1 (x0)."""
        if self.prediction == "eps":
            return snr
        if self.prediction == "v":
            return snr + 1
        return torch.ones_like(snr)

    def _alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.schedule.alpha_sigma(t.to(like.device))
        return _expand(alpha, like), _expand(sigma, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps (Imagen Sec. 2, q(z_t | x))."""
        alpha, sigma = self._alpha_sigma(t, x0)
        return (alpha * x0.float() + sigma * noise.float()).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Regression target: eps, v = alpha eps - sigma x0 (Salimans & Ho 2022 Sec. 4), or x0."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        alpha, sigma = self._alpha_sigma(t, x0)
        return (alpha * noise.float() - sigma * x0.float()).to(x0.dtype)

    def to_x0_eps(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) in float32 from the raw output, inverting x_t = alpha x0 + sigma eps."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        out, x_t = model_out.float(), x_t.float()
        if self.prediction == "eps":
            return (x_t - sigma * out) / alpha, out
        if self.prediction == "x0":
            return out, (x_t - alpha * out) / sigma
        # v-prediction (Salimans & Ho 2022 Sec. 4): x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v.
        return alpha * x_t - sigma * out, sigma * x_t + alpha * out

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """t ~ U(0, 1) per sample (Imagen App. A, continuous time); an expert (log_snr_range, eDiff-I, Balaji et al.
        2022 Sec. 4) draws t uniformly over its own interval instead; noise_level_sampling=weighted draws t in
        proportion to the loss weight (`draw_t` gives the factor that keeps the objective)."""
        return self.draw_t(batch, generator, device)[0]

    def draw_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """(t [B], importance [B]): t as `sample_t` draws it and p(t) / q(t), the factor on the loss that makes
        E[importance w(t) mse(t)] the uniform-t objective's (1 when t is drawn uniformly). The stage's per-level loss
        logs then show the reweighted loss, not w(t) mse(t)."""
        if self._weighted_levels is not None:
            return self._weighted_levels.sample(batch, generator=generator, device=device)
        u = torch.rand(batch, generator=generator, device=_gen_device(generator, device)).to(device)
        if self.t_range != (0.0, 1.0):
            u = self.t_range[0] + (self.t_range[1] - self.t_range[0]) * u
        return u, torch.ones_like(u)

    def training_loss(
        self,
        model_fn: Callable[..., Tensor],
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        **model_kwargs,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample (weighted) MSE of output vs target (Imagen Sec. 2 Eq. 1); returns (loss [B] float32, t [B])."""
        importance = None
        if t is None:  # a caller's own t is taken as drawn uniformly
            t, importance = self.draw_t(x0.shape[0], generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=_gen_device(generator, x0.device), dtype=x0.dtype)
            noise = noise.to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t, **model_kwargs)
        if out.shape != x0.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} must equal x0's {tuple(x0.shape)}")
        err = self.multiscale_mse(out.float() - self.target(x0, noise, t).float())
        weight = self.loss_weight(t).to(err.device)
        if importance is not None:
            weight = weight * importance.to(err.device)
        return err * weight, t  # (B,)

    def multiscale_mse(self, diff: Tensor) -> Tensor:
        """Per-sample MSE [B] of the error averaged over 2^i x 2^i blocks, weighted by multiscale_weights[i] and
        normalised by their sum (Hoogeboom et al. 2023 Sec. 3.2: [1, 2, 4] weighs each halving by 1 / resolution).

        A block average keeps an error that is smooth over the block (where the objects go) and divides white error
        (unpredictable detail) by the block's area, so coarser terms lift layout's share of the gradient.
        """
        weights = self.multiscale_weights
        if len(weights) == 1:
            return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)
        block = 2 ** (len(weights) - 1)
        if diff.dim() != 4 or diff.shape[-1] % block or diff.shape[-2] % block:
            raise ValueError(f"multiscale_weights of length {len(weights)} needs (B, C, H, W) images divisible by "
                             f"{block}, got {tuple(diff.shape)}; drop the coarsest weights")
        total = 0
        for i, w in enumerate(weights):
            if w:
                pooled = F.avg_pool2d(diff, 2**i) if i else diff  # (B, C, H / 2^i, W / 2^i)
                total = total + w * pooled.pow(2).reshape(diff.shape[0], -1).mean(dim=1)
        return total / sum(weights)

    def make_denoiser(
        self,
        model_fn: Callable[..., Tensor],
        cond: dict[str, Tensor],
        null_cond: dict[str, Tensor] | None = None,
        guidance_weight: float = 1.0,
        thresholding: str = "dynamic",
        percentile: float = 0.995,
        shared: dict[str, Tensor] | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """denoise(x_t, t) -> x0_hat: guidance (Imagen Sec. 2.2), output to x0, thresholding (Sec. 2.3)."""
        check_thresholding(thresholding, percentile)
        guided = guided_model_fn(model_fn, cond, null_cond, guidance_weight, shared, guidance_interval)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            x0, _ = self.to_x0_eps(guided(x_t, t), x_t, t)
            return threshold_x0(x0, thresholding, percentile)

        return denoise

    @torch.no_grad()
    def sample(
        self,
        model_fn: Callable[..., Tensor],
        noise: Tensor,
        *,
        cond: dict[str, Tensor],
        null_cond: dict[str, Tensor] | None = None,
        guidance_weight: float = 1.0,
        thresholding: str = "dynamic",
        percentile: float = 0.995,
        sampler: str = "ddpm",
        steps: int = 50,
        eta: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        shared: dict[str, Tensor] | None = None,
        callback: Callable[[dict], None] | None = None,
        disable: bool = True,
    ) -> Tensor:
        """Sample from x_1 = noise down to t = 0 with a guided, thresholded denoiser (Imagen Sec. 2.2-2.3)."""
        check_sampling_options(sampler, steps, guidance_weight, thresholding, percentile, eta, guidance_interval)
        denoise = self.make_denoiser(model_fn, cond, null_cond, guidance_weight, thresholding, percentile, shared,
                                     guidance_interval)
        return self.run_sampler(denoise, noise, sampler=sampler, steps=steps, eta=eta, generator=generator,
                                callback=callback, disable=disable)

    @torch.no_grad()
    def run_sampler(
        self,
        denoise: Callable[[Tensor, Tensor], Tensor],
        noise: Tensor,
        *,
        sampler: str = "ddpm",
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        disable: bool = True,
    ) -> Tensor:
        """Run `sampler` over this schedule from x_1 = noise with a ready x0 denoiser (one from make_denoiser, or a
        pair of noise-level experts, imagen_lit.diffusion.experts)."""
        check_sampling_options(sampler, steps, eta=eta)
        kwargs = {"generator": generator, "callback": callback, "disable": disable}
        if sampler == "ddim":
            kwargs["eta"] = eta  # the only sampler with a noise knob
        return get_sampler(sampler)(denoise, noise, time_grid(steps), self.schedule, **kwargs)
