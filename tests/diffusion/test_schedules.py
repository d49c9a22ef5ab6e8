"""Schedules: endpoints, monotonicity, alpha^2 + sigma^2 = 1, and the DDPM linear betas."""

import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, LinearSchedule, LogSNRSchedule, get_schedule

T_GRID = torch.linspace(0, 1, 1001)


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()], ids=["cosine", "linear"])
def test_alpha_sigma_on_unit_circle_and_monotone(schedule):
    log_snr = schedule.log_snr(T_GRID)
    alpha, sigma = schedule.alpha_sigma(T_GRID)
    assert torch.isfinite(log_snr).all() and (sigma > 0).all() and (alpha > 0).all()
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha**2, torch.sigmoid(log_snr), atol=1e-6, rtol=1e-5)
    assert (log_snr[1:] < log_snr[:-1]).all(), "log-SNR must fall strictly as t grows"
    assert (alpha[1:] <= alpha[:-1]).all() and (sigma[1:] >= sigma[:-1]).all()


def test_cosine_endpoints():
    schedule = CosineSchedule(logsnr_min=-15.0, logsnr_max=12.0)
    ends = schedule.log_snr(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends, torch.tensor([12.0, -15.0]), atol=1e-3, rtol=0)
    alpha, sigma = CosineSchedule().alpha_sigma(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(alpha, torch.tensor([1.0, 4.54e-5]), atol=0, rtol=1e-2)
    torch.testing.assert_close(sigma, torch.tensor([4.54e-5, 1.0]), atol=0, rtol=1e-2)


def test_cosine_matches_nichol_dhariwal_alpha_bar_without_clipping():
    # With wide clip limits, alpha^2 ~ cos^2(pi t / 2), the cosine schedule of Nichol & Dhariwal (s = 0).
    schedule = CosineSchedule(logsnr_min=-30.0, logsnr_max=30.0)
    t = torch.linspace(0.05, 0.95, 19)
    alpha, _ = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2, torch.cos(0.5 * torch.pi * t) ** 2, atol=1e-5, rtol=0)


def test_linear_matches_discrete_ddpm_alpha_bar():
    schedule = LinearSchedule(beta_start=1e-4, beta_end=0.02, num_timesteps=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, dim=0)  # alpha_bar[i - 1] belongs to step i, i.e. t = i / T
    t = torch.arange(1, 1001) / 1000
    alpha, _ = schedule.alpha_sigma(t)
    # The continuum drops the beta^2 / 2 terms of -log(1 - beta): at most ~7e-3 in log alpha_bar near t = 1.
    torch.testing.assert_close(alpha.double() ** 2, alpha_bar, atol=2e-3, rtol=1e-2)
    log_err = (2 * alpha.double().log() - alpha_bar.log()).abs()
    assert log_err.max() < 0.1, f"log alpha_bar off by {log_err.max():.3f}"


def test_linear_endpoints_are_finite_and_clipped():
    log_snr = LinearSchedule().log_snr(torch.tensor([0.0, 1.0]))
    assert log_snr[0] == 20.0, "t = 0 has infinite log-SNR; it must be clipped at logsnr_max"
    expected_end = -torch.log(torch.expm1(torch.tensor(1000 * (1e-4 + 0.5 * (0.02 - 1e-4)))))
    torch.testing.assert_close(log_snr[1], expected_end)


def test_alpha_sigma_stable_at_extreme_log_snr():
    class Extreme(LogSNRSchedule):
        def log_snr(self, t):
            return 80.0 - 160.0 * t

    alpha, sigma = Extreme().alpha_sigma(torch.tensor([0.0, 1.0]))
    assert torch.isfinite(alpha).all() and torch.isfinite(sigma).all()
    torch.testing.assert_close(alpha, torch.tensor([1.0, 4.248e-18]), atol=0, rtol=1e-3)
    torch.testing.assert_close(sigma, torch.tensor([4.248e-18, 1.0]), atol=0, rtol=1e-3)


def test_get_schedule():
    assert isinstance(get_schedule("cosine"), CosineSchedule)
    linear = get_schedule("linear", num_timesteps=500)
    assert isinstance(linear, LinearSchedule) and linear.num_timesteps == 500
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'; choose one of cosine, linear"):
        get_schedule("sigmoid")
