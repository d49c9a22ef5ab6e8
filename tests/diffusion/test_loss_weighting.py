"""Loss weighting (min-SNR-gamma, Hang et al. 2023) and the resolution shift of the cosine schedule."""

import math

import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_loss_is_clipped_snr_times_x0_error(prediction):
    """Whatever the target, the weighted loss is min(SNR, gamma) * ||x0_hat - x0||^2 (Hang et al. 2023 Eq. 6)."""
    gamma = 5.0
    diffusion = GaussianDiffusion(CosineSchedule(), prediction, loss_weighting="min_snr", min_snr_gamma=gamma)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.99])
    out = torch.randn(6, 3, 4, 4, generator=g)
    losses, _ = diffusion.training_loss(lambda x_t, t: out, x0, t=t, noise=noise)
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, _ = diffusion.to_x0_eps(out, x_t, t)
    snr = torch.exp(diffusion.schedule.log_snr(t))
    expected = snr.clamp(max=gamma) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_min_snr_floor_keeps_weight_at_high_noise(prediction):
    """min_snr_floor f: the weighted loss is clamp(SNR, f, gamma) * ||x0_hat - x0||^2, so the noisiest levels keep
    weight f in x0 terms (f = 1 is v-MSE's own weight there) instead of SNR -> 0."""
    gamma, floor = 5.0, 1.0
    diffusion = GaussianDiffusion(CosineSchedule(), prediction, "min_snr", min_snr_gamma=gamma, min_snr_floor=floor)
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(6, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.99])
    losses, _ = diffusion.training_loss(lambda x_t, t: out, x0, t=t, noise=noise)
    x0_hat, _ = diffusion.to_x0_eps(out, diffusion.q_sample(x0, t, noise), t)
    snr = torch.exp(diffusion.schedule.log_snr(t))
    expected = snr.clamp(min=floor, max=gamma) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-6)
    plain = GaussianDiffusion(CosineSchedule(), prediction, "min_snr", min_snr_gamma=gamma).loss_weight(t)
    assert (diffusion.loss_weight(t)[-2:] > 5 * plain[-2:]).all()  # t = 0.8, 0.99: SNR 0.1 and ~0


def test_no_weighting_is_plain_mse():
    diffusion = GaussianDiffusion(CosineSchedule(), "v")
    x0, noise, out = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    t = torch.tensor([0.5, 0.5])
    losses, _ = diffusion.training_loss(lambda x_t, t: out, x0, t=t, noise=noise)
    _, sigma = diffusion.schedule.alpha_sigma(t)
    torch.testing.assert_close(losses, sigma**2)  # v = alpha * 0 - sigma * 1


def test_bad_weighting_is_one_line():
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion(CosineSchedule(), loss_weighting="snr+1")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        GaussianDiffusion(CosineSchedule(), loss_weighting="min_snr", min_snr_gamma=0)
    with pytest.raises(ValueError, match="min_snr_floor must be in"):
        GaussianDiffusion(CosineSchedule(), "v", loss_weighting="min_snr", min_snr_floor=6.0)
    with pytest.raises(ValueError, match="use prediction=v or x0"):
        GaussianDiffusion(CosineSchedule(), "eps", loss_weighting="min_snr", min_snr_floor=1.0)


def test_cosine_shift_adds_to_log_snr_and_keeps_variance_preserving():
    t = torch.linspace(0.05, 0.95, 7)
    shift = 2 * math.log(64 / 32)  # simple diffusion: a 32px model against the 64px reference
    base, shifted = CosineSchedule(), CosineSchedule(shift=shift)
    torch.testing.assert_close(shifted.log_snr(t), base.log_snr(t) + shift)
    alpha, sigma = shifted.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    assert (alpha > base.alpha_sigma(t)[0]).all()  # a positive shift means less noise at every t


def test_shift_with_gamma_over_four_keeps_the_half_resolution_weights():
    """recipe_search.md: at 32x32 with the shift 2 log(16/32), min-SNR gamma 1.25 weighs every t as the unshifted
    16x16 model with gamma 5 does in x0 terms, up to the global factor 4: min(4 SNR, 5) = 4 min(SNR, 1.25)."""
    t = torch.linspace(0.02, 0.98, 25)
    half = GaussianDiffusion(CosineSchedule(), "x0", "min_snr", min_snr_gamma=5.0)
    full = GaussianDiffusion(CosineSchedule(shift=2 * math.log(16 / 32)), "x0", "min_snr", min_snr_gamma=1.25)
    torch.testing.assert_close(4 * full.loss_weight(t), half.loss_weight(t), rtol=1e-5, atol=1e-7)
    unweighted = GaussianDiffusion(CosineSchedule(shift=2 * math.log(16 / 32)), "x0", "min_snr", min_snr_gamma=5.0)
    # The shift alone does not: 4 min(SNR_16 / 4, 5) = min(SNR_16, 20), so the nearly clean levels gain 4x on the noisy.
    assert (4 * unweighted.loss_weight(t) > 3.9 * half.loss_weight(t)).any()


@pytest.mark.parametrize("weighting", ["none", "min_snr"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_x0_weight_is_what_the_loss_puts_on_the_x0_error(prediction, weighting):
    """x0_weight(t) x ||x0_hat - x0||^2 is the training loss, whatever the target (relation_likelihood --per-level)."""
    diffusion = GaussianDiffusion(CosineSchedule(), prediction, weighting)
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(6, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.99])
    losses, _ = diffusion.training_loss(lambda x_t, t: out, x0, t=t, noise=noise)
    x0_hat, _ = diffusion.to_x0_eps(out, diffusion.q_sample(x0, t, noise), t)
    expected = diffusion.x0_weight(t) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-6)
