"""Noise conditioning augmentation: the forward process at t = aug_level (Imagen Sec. 2.4)."""

import pytest
import torch

from imagen_lit.diffusion import (
    CosineSchedule,
    GaussianDiffusion,
    LinearSchedule,
    check_aug_level,
    noise_augment,
    sample_aug_level,
)


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()], ids=["cosine", "linear"])
def test_noise_augment_is_q_sample_at_aug_level(schedule):
    lowres, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    aug_level = torch.tensor([0.0, 0.1, 0.5, 0.9])
    expected = GaussianDiffusion(schedule).q_sample(lowres, aug_level, noise)
    torch.testing.assert_close(noise_augment(lowres, aug_level, schedule, noise=noise), expected)


def test_noise_augment_ends_and_generator():
    schedule = CosineSchedule()
    lowres = torch.rand(2, 3, 8, 8) * 2 - 1
    clean = noise_augment(lowres, torch.zeros(2), schedule)
    assert (clean - lowres).abs().max() < 1e-3  # sigma(0) = sqrt(sigmoid(-20)) ~ 5e-5
    noise = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(noise_augment(lowres, torch.ones(2), schedule, noise=noise), noise, atol=1e-4, rtol=0)
    a = noise_augment(lowres, torch.full((2,), 0.3), schedule, generator=torch.Generator().manual_seed(3))
    b = noise_augment(lowres, torch.full((2,), 0.3), schedule, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, lowres, atol=0.05)


def test_aug_level_shape_and_range_are_checked():
    with pytest.raises(ValueError, match=r"aug_level must be \[B=2\]"):
        noise_augment(torch.zeros(2, 3, 4, 4), torch.zeros(3), CosineSchedule())
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"aug_level must be in \[0, 1\]"):
            check_aug_level(bad)
    check_aug_level(0.0)
    check_aug_level(1.0)


def test_training_levels_are_uniform():
    levels = sample_aug_level(50_000, generator=torch.Generator().manual_seed(0))
    assert levels.shape == (50_000,) and 0 <= levels.min() and levels.max() < 1
    assert abs(levels.mean().item() - 0.5) < 0.01 and abs(levels.var().item() - 1 / 12) < 0.002


def test_training_levels_below_a_maximum_are_uniform_over_it():
    levels = sample_aug_level(50_000, generator=torch.Generator().manual_seed(0), max_aug_level=0.3)
    assert 0 <= levels.min() and levels.max() < 0.3
    assert abs(levels.mean().item() - 0.15) < 0.003 and abs(levels.var().item() - 0.09 / 12) < 0.0005
