"""The multiscale training loss (Hoogeboom et al. 2023 Sec. 3.2): MSE of the error block-averaged at 1, 2, 4.. px."""

import pytest
import torch
import torch.nn.functional as F

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion


def _losses(weights, out, x0, noise, t):
    diffusion = GaussianDiffusion(CosineSchedule(), "v", "min_snr", multiscale_weights=weights)
    return diffusion.training_loss(lambda x_t, t: out, x0, t=t, noise=noise)[0]


def test_one_weight_is_the_plain_mse():
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    diffusion = GaussianDiffusion(CosineSchedule(), "v", "min_snr")
    expected = ((out - diffusion.target(x0, noise, t)) ** 2).flatten(1).mean(1) * diffusion.loss_weight(t)
    torch.testing.assert_close(_losses([1.0], out, x0, noise, t), expected)


def test_smooth_error_keeps_its_weight_and_white_error_shrinks():
    """An error constant over each 4x4 block counts fully at every scale; i.i.d. error of variance s^2 counts
    s^2 (w0 + w1 / 4 + w2 / 16) / sum(w): [1, 2, 4] -> 1.75 / 7 = 0.25 of the plain MSE."""
    diffusion = GaussianDiffusion(CosineSchedule(), "v", multiscale_weights=[1, 2, 4])
    smooth = torch.randn(2, 3, 8, 8).repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)  # (2, 3, 32, 32)
    plain = smooth.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(diffusion.multiscale_mse(smooth), plain)
    white = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ratio = diffusion.multiscale_mse(white).mean() / white.pow(2).mean()
    assert abs(ratio.item() - 0.25) < 0.01, ratio


def test_the_half_resolution_term_is_the_loss_of_the_block_averaged_images():
    """Weights [0, 1]: the loss of a 32x32 prediction is the plain loss of the 2x2-averaged output against the
    2x2-averaged target. Averaging is linear, so it is the loss a 16x16 model would see on the averaged images."""
    g = torch.Generator().manual_seed(2)
    x0, noise, out = (torch.randn(3, 3, 32, 32, generator=g) for _ in range(3))
    t = torch.tensor([0.2, 0.5, 0.8])
    diffusion = GaussianDiffusion(CosineSchedule(), "v", "min_snr")
    pooled = F.avg_pool2d(out - diffusion.target(x0, noise, t), 2)  # (3, 3, 16, 16)
    expected = pooled.pow(2).flatten(1).mean(1) * diffusion.loss_weight(t)
    torch.testing.assert_close(_losses([0.0, 1.0], out, x0, noise, t), expected)


def test_bad_multiscale_weights_are_one_line():
    for bad in ([], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="multiscale_weights must be"):
            GaussianDiffusion(CosineSchedule(), "v", multiscale_weights=bad)
    diffusion = GaussianDiffusion(CosineSchedule(), "v", multiscale_weights=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="divisible by 8"):
        diffusion.multiscale_mse(torch.zeros(1, 3, 12, 12))
