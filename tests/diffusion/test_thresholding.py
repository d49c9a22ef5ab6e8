"""Static and dynamic thresholding (Imagen Sec. 2.3) against values worked out by hand."""

import pytest
import torch

from imagen_lit.diffusion import THRESHOLDING_MODES, threshold_x0


def _image_with_outliers() -> torch.Tensor:
    """201 values (C, H, W) = (1, 3, 67): 199 of magnitude 0.5, then 2.0 and -3.0.

    The 99.5% quantile of |x| sits at sorted position 0.995 * (201 - 1) = 199, i.e. the second largest: 2.0.
    """
    values = torch.full((201,), 0.5)
    values[1::2] = -0.5
    values[7] = 2.0
    values[100] = -3.0
    return values.reshape(1, 3, 67)


def test_dynamic_by_hand():
    inside = torch.linspace(-0.9, 0.9, 201).reshape(1, 3, 67)  # every |x| < 1, so s = max(1, q) = 1
    x0 = torch.stack([inside, _image_with_outliers()])  # (2, 1, 3, 67)
    out = threshold_x0(x0, "dynamic", 0.995)

    torch.testing.assert_close(out[0], inside, rtol=0, atol=0)  # s = 1: untouched
    expected = _image_with_outliers().reshape(-1).clone()  # s = 2: clamp to [-2, 2], then halve
    expected[expected.abs() == 0.5] *= 0.5
    expected[7] = 1.0  # 2.0 / 2
    expected[100] = -1.0  # clamp(-3.0) = -2.0, / 2
    torch.testing.assert_close(out[1].reshape(-1), expected)
    assert sorted(set(out[1].reshape(-1).tolist())) == [-1.0, -0.25, 0.25, 1.0]


def test_dynamic_interpolates_between_order_statistics():
    # |x| sorted = [1, 2, 3, 5]; the median sits at position 0.5 * 3 = 1.5, halfway between 2 and 3: s = 2.5.
    x0 = torch.tensor([-1.0, 2.0, -3.0, 5.0]).reshape(1, 1, 2, 2)
    out = threshold_x0(x0, "dynamic", 0.5)
    torch.testing.assert_close(out.reshape(-1), torch.tensor([-0.4, 0.8, -1.0, 1.0]))
    # percentile = 1 takes the max: s = 5.
    out = threshold_x0(x0, "dynamic", 1.0)
    torch.testing.assert_close(out.reshape(-1), torch.tensor([-0.2, 0.4, -0.6, 1.0]))


def test_dynamic_agrees_with_torch_quantile():
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = torch.quantile(x0.abs().reshape(4, -1), 0.9, dim=1).clamp(min=1).reshape(4, 1, 1, 1)
    torch.testing.assert_close(threshold_x0(x0, "dynamic", 0.9), x0.clamp(-s, s) / s)
    assert threshold_x0(x0, "dynamic", 0.9).abs().max() <= 1.0


def test_static_and_none():
    x0 = torch.tensor([-2.5, -1.0, -0.3, 0.0, 0.7, 1.0, 4.0]).reshape(1, 1, 1, 7)
    assert threshold_x0(x0, "none") is x0
    expected = torch.tensor([-1.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.0]).reshape(1, 1, 1, 7)
    torch.testing.assert_close(threshold_x0(x0, "static"), expected, rtol=0, atol=0)


def test_keeps_dtype():
    x0 = (4 * torch.randn(2, 3, 4, 4)).to(torch.bfloat16)
    for mode in THRESHOLDING_MODES:
        assert threshold_x0(x0, mode).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("mode", "percentile", "message"),
    [
        ("clip", 0.995, "unknown thresholding mode 'clip'; choose one of none, static, dynamic"),
        ("dynamic", 0.0, r"percentile must be in \(0, 1\]"),
        ("dynamic", 99.5, r"percentile must be in \(0, 1\], e.g. 0.995, got 99.5"),
    ],
)
def test_bad_input(mode, percentile, message):
    with pytest.raises(ValueError, match=message):
        threshold_x0(torch.zeros(1, 1, 2, 2), mode, percentile)
