"""Every sampler, given the exact posterior mean E[x0 | x_t] of known data, must reproduce that data.

Data are a 2-D Gaussian and a 1-D two-component Gaussian mixture, for which E[x0 | x_t] has a closed form.
Tolerances are 4 Monte-Carlo standard errors of the checked statistic; step counts are chosen so that the
discretisation error is well inside that. A denoiser with the wrong data mean must fail the same check.
"""

import math
from dataclasses import dataclass

import pytest
import torch

from imagen_lit.diffusion import SAMPLERS, CosineSchedule, GaussianDiffusion, get_sampler, time_grid
from imagen_lit.diffusion.samplers import sample_ddim, sample_ddpm

N = 20_000
Z = 4.0  # tolerance in standard errors
SCHEDULE = CosineSchedule()  # alpha(1) = 4.5e-5, so N(0, 1) at t = 1 is the true marginal to ~1e-4
# (name, sampler kwargs, steps): ancestral steps converge as 1/steps, DPM-Solver++(2M) as 1/steps^2.
SAMPLER_CASES = [
    ("ddpm", {}, 500),
    ("ddim", {"eta": 0.0}, 200),
    ("ddim", {"eta": 1.0}, 500),
    ("dpmpp_2m", {}, 50),
]
CASE_IDS = ["ddpm", "ddim_eta0", "ddim_eta1", "dpmpp_2m"]


@dataclass
class Mixture:
    """Independent per-dimension Gaussian mixtures; means, stds: (K, D), weights: (K,)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)  # (D,)

    def var(self) -> torch.Tensor:
        second = (self.weights[:, None] * (self.stds**2 + self.means**2)).sum(0)
        return second - self.mean() ** 2

    def central_moment4(self) -> torch.Tensor:
        d = self.means - self.mean()  # E[(d + s Z)^4] = d^4 + 6 d^2 s^2 + 3 s^4 per component
        return (self.weights[:, None] * (d**4 + 6 * d**2 * self.stds**2 + 3 * self.stds**4)).sum(0)

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t]: responsibilities times each component's Gaussian posterior mean."""
        alpha, sigma = SCHEDULE.alpha_sigma(t)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]  # (B, 1, 1) against (B, K, D)
        x = x_t[:, None, :]  # (B, 1, D)
        var_t = alpha**2 * self.stds**2 + sigma**2  # marginal variance of x_t in each component
        log_lik = -0.5 * (x - alpha * self.means) ** 2 / var_t - 0.5 * torch.log(var_t)
        resp = torch.softmax(self.weights.log()[:, None] + log_lik, dim=1)  # (B, K, D)
        component_mean = self.means + alpha * self.stds**2 / var_t * (x - alpha * self.means)
        return (resp * component_mean).sum(1)  # (B, D)


GAUSSIAN = Mixture(torch.tensor([[0.5, -0.3]]), torch.tensor([[0.7, 1.3]]), torch.tensor([1.0]))
MIXTURE = Mixture(torch.tensor([[-1.5], [2.0]]), torch.tensor([[0.3], [0.5]]), torch.tensor([0.3, 0.7]))
DATA = {"gaussian": GAUSSIAN, "mixture": MIXTURE}


def moment_errors(samples: torch.Tensor, data: Mixture) -> dict[str, float]:
    """|error| / standard error of the sample mean and variance, the worst over dimensions."""
    var = data.var()
    mean_z = (samples.mean(0) - data.mean()).abs() / (var / N).sqrt()
    var_z = (samples.var(0) - var).abs() / ((data.central_moment4() - var**2) / N).sqrt()
    return {"mean": mean_z.max().item(), "var": var_z.max().item()}


def run_sampler(name: str, kwargs: dict, steps: int, denoise, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(N, dim, generator=g)
    return get_sampler(name)(denoise, x1, time_grid(steps), SCHEDULE, generator=g, **kwargs)


@pytest.mark.parametrize("data_name", DATA)
@pytest.mark.parametrize(("name", "kwargs", "steps"), SAMPLER_CASES, ids=CASE_IDS)
def test_sampler_reproduces_known_data(name, kwargs, steps, data_name):
    data = DATA[data_name]
    samples = run_sampler(name, kwargs, steps, data.posterior_mean, dim=data.means.shape[1])
    errors = moment_errors(samples, data)
    assert max(errors.values()) < Z, f"{name} {kwargs}: errors in standard errors {errors}"
    if data is MIXTURE:  # the right mass in each mode, not only the right moments
        below = (samples < 0.25).float().mean().item()  # expected 0.3 + 0.7 P(N(2, 0.5^2) < 0.25) = 0.30016
        assert abs(below - 0.30016) < Z * math.sqrt(0.3 * 0.7 / N), f"mass below 0.25: {below}"


@pytest.mark.parametrize("data_name", DATA)
@pytest.mark.parametrize(("name", "kwargs", "steps"), SAMPLER_CASES, ids=CASE_IDS)
def test_wrong_denoiser_fails_the_same_check(name, kwargs, steps, data_name):
    data = DATA[data_name]
    wrong = Mixture(data.means + 0.1, data.stds, data.weights)  # data mean off by 0.1
    samples = run_sampler(name, kwargs, steps, wrong.posterior_mean, dim=data.means.shape[1])
    assert moment_errors(samples, data)["mean"] > Z


def test_wrong_variance_fails_the_same_check():
    wrong = Mixture(GAUSSIAN.means, 1.1 * GAUSSIAN.stds, GAUSSIAN.weights)
    samples = run_sampler("dpmpp_2m", {}, 50, wrong.posterior_mean, dim=2)
    assert moment_errors(samples, GAUSSIAN)["var"] > Z


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_gaussian_diffusion_sample_end_to_end(prediction):
    """The network predicts eps, v or x0 from the analytic posterior; sample() must still recover the data."""
    diffusion = GaussianDiffusion(SCHEDULE, prediction)

    def model_fn(x_t, t, cond):
        x0 = GAUSSIAN.posterior_mean(x_t, t) + cond  # cond = 0 keeps it exact
        alpha, sigma = SCHEDULE.alpha_sigma(t)
        eps = (x_t - alpha[:, None] * x0) / sigma[:, None]  # the eps that goes with this x0 at x_t
        return diffusion.target(x0, eps, t)

    x1 = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    samples = diffusion.sample(
        model_fn, x1, cond={"cond": torch.zeros(N, 1)}, thresholding="none", sampler="dpmpp_2m", steps=50
    )
    errors = moment_errors(samples, GAUSSIAN)
    assert max(errors.values()) < Z, f"{prediction}: errors in standard errors {errors}"


def test_deterministic_samplers_follow_the_exact_probability_flow():
    """Gaussian data: the ODE keeps each z-score, x0 = m + s (x1 - alpha_1 m) / sqrt(alpha_1^2 s^2 + sigma_1^2)."""
    x1 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    alpha_1, sigma_1 = SCHEDULE.alpha_sigma(torch.tensor(1.0))
    m, s = GAUSSIAN.means[0], GAUSSIAN.stds[0]
    exact = m + s * (x1 - alpha_1 * m) / (alpha_1**2 * s**2 + sigma_1**2).sqrt()

    def error(name: str, steps: int) -> float:
        out = get_sampler(name)(GAUSSIAN.posterior_mean, x1, time_grid(steps), SCHEDULE)
        return (out - exact).abs().max().item()

    ddim_ratio = error("ddim", 40) / error("ddim", 20)
    dpm_ratio = error("dpmpp_2m", 40) / error("dpmpp_2m", 20)
    assert 0.4 < ddim_ratio < 0.6, f"DDIM should be first order, error ratio {ddim_ratio:.2f}"
    assert dpm_ratio < 0.35, f"DPM-Solver++(2M) should be second order, error ratio {dpm_ratio:.2f}"
    assert error("dpmpp_2m", 40) < 0.1 * error("ddim", 40)


def test_dpmpp_2m_steps_by_hand():
    """Lu et al. 2022 Alg. 2 on an uneven grid, with a denoiser that returns fixed x0 values in turn."""
    ts = torch.tensor([1.0, 0.7, 0.55, 0.2, 0.0])
    x0_values = [0.3, -0.2, 0.5, 0.1]
    calls = iter(x0_values)
    out = get_sampler("dpmpp_2m")(lambda x, t: torch.full_like(x, next(calls)), torch.ones(1, 1), ts, SCHEDULE)

    log_snr = SCHEDULE.log_snr(ts).double()
    alpha, sigma = (v.double() for v in SCHEDULE.alpha_sigma(ts))
    lam = log_snr / 2
    x = 1.0
    for i in range(4):
        h = lam[i + 1] - lam[i]
        d = x0_values[i]
        if 0 < i < 3:  # second order in the middle, first order on the first and last step
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0_values[i] - 1 / (2 * r) * x0_values[i - 1]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (torch.exp(-h) - 1) * d
    torch.testing.assert_close(out.double().reshape(()), x, atol=1e-5, rtol=1e-5)


def test_ddim_eta1_is_ancestral():
    denoise = GAUSSIAN.posterior_mean  # smooth, so float32 rounding in the two formulas is not amplified
    x1 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    ts = time_grid(20)
    ddpm = sample_ddpm(denoise, x1, ts, SCHEDULE, generator=torch.Generator().manual_seed(1))
    ddim = sample_ddim(denoise, x1, ts, SCHEDULE, generator=torch.Generator().manual_seed(1), eta=1.0)
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", SAMPLERS)
def test_single_step_returns_x0_hat(name):
    x1 = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    out = get_sampler(name)(lambda x, t: torch.full_like(x, 0.25), x1, time_grid(1), SCHEDULE)
    torch.testing.assert_close(out, torch.full_like(x1, 0.25), atol=1e-4, rtol=0)


def test_time_grid_and_bad_input():
    torch.testing.assert_close(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        time_grid(0)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of ddpm, ddim, dpmpp_2m"):
        get_sampler("euler")
    with pytest.raises(ValueError, match="ts must be strictly descending"):
        sample_ddpm(lambda x, t: x, torch.zeros(2, 1), torch.linspace(0, 1, 5), SCHEDULE)
