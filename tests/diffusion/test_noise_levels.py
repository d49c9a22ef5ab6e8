"""Noise levels drawn in proportion to the loss weight: the same objective as uniform t, with equal sample weights."""

import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion
from imagen_lit.diffusion.noise_levels import WeightedNoiseLevels


def _min_snr_v(**kwargs):
    return GaussianDiffusion(CosineSchedule(), "v", loss_weighting="min_snr", min_snr_gamma=5.0, **kwargs)


def test_importance_weighted_expectation_equals_the_uniform_one():
    """E_q[importance w(t) g(t)] = the integral of w g over U(0, 1), for a g unlike the weight w (the loss is w x mse,
    so q only has to cover where w is not negligible)."""
    weight = lambda t: torch.exp(-(((t - 0.4) / 0.1) ** 2)) + 0.01  # noqa: E731
    levels = WeightedNoiseLevels(weight, (0.0, 1.0), num_bins=256)
    t, importance = levels.sample(400_000, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    grid = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000
    exact = float((weight(grid) * (grid**2 + 1)).mean())
    estimate = float((importance * weight(t) * (t**2 + 1)).mean())
    assert estimate == pytest.approx(exact, rel=0.005)
    assert float((importance * weight(t)).std() / (importance * weight(t)).mean()) < 0.05  # equal sample weights


def test_weighted_draws_follow_the_loss_weight_and_equalise_it():
    """The share of draws with log-SNR beyond +-3 drops from ~28% (uniform, cosine) to the weight they carry (~4%),
    and importance x weight is nearly constant: its coefficient of variation is far below uniform t's."""
    uniform, weighted = _min_snr_v(), _min_snr_v(noise_level_sampling="weighted")
    g = torch.Generator().manual_seed(1)
    t_u, imp_u = uniform.draw_t(200_000, generator=g)
    t_w, imp_w = weighted.draw_t(200_000, generator=g)
    assert torch.equal(imp_u, torch.ones_like(imp_u))
    extreme = lambda t: (uniform.schedule.log_snr(t).abs() > 3).float().mean()  # noqa: E731
    assert 0.25 < float(extreme(t_u)) < 0.31 and 0.02 < float(extreme(t_w)) < 0.06
    cv = lambda x: float(x.std() / x.mean())  # noqa: E731
    assert cv(weighted.loss_weight(t_w) * imp_w) < 0.1 < 0.5 < cv(uniform.loss_weight(t_u))


def test_weighted_training_loss_has_the_uniform_objective():
    """With a fixed model error the mean weighted loss matches uniform t's, each with its own draws."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4096, 1, 2, 2, generator=g)
    out = torch.zeros_like(x0)
    means = []
    for sampling in ("uniform", "weighted"):
        losses, _ = _min_snr_v(noise_level_sampling=sampling).training_loss(
            lambda x_t, t: out, x0, generator=torch.Generator().manual_seed(3)
        )
        means.append(float(losses.mean()))
    assert means[1] == pytest.approx(means[0], rel=0.05)


def test_weighted_draws_stay_inside_an_experts_interval():
    expert = _min_snr_v(noise_level_sampling="weighted", log_snr_range=[None, 0.0])
    t, _ = expert.draw_t(10_000, generator=torch.Generator().manual_seed(4))
    assert float(expert.schedule.log_snr(t).max()) <= 1e-3


def test_uniform_draws_are_unchanged_by_the_option():
    """The default keeps the RNG stream of every earlier run (seeds and exact resume reproduce)."""
    diffusion = _min_snr_v()
    torch.testing.assert_close(diffusion.sample_t(5, generator=torch.Generator().manual_seed(5)),
                               torch.rand(5, generator=torch.Generator().manual_seed(5)))


def test_bad_sampling_is_one_line():
    with pytest.raises(ValueError, match="noise_level_sampling"):
        _min_snr_v(noise_level_sampling="lognormal")
    with pytest.raises(ValueError, match="loss weight must be finite"):
        WeightedNoiseLevels(lambda t: torch.zeros_like(t), (0.0, 1.0))
