"""Keeping the predicted x0 inside the data range during sampling (Imagen Sec. 2.3)."""

import torch
from torch import Tensor

THRESHOLDING_MODES = ("none", "static", "dynamic")


def check_thresholding(mode: str, percentile: float) -> None:
    """Raise ValueError for an unknown mode or a percentile outside (0, 1]."""
    if mode not in THRESHOLDING_MODES:
        raise ValueError(f"unknown thresholding mode {mode!r}; choose one of {', '.join(THRESHOLDING_MODES)}")
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], e.g. 0.995, got {percentile}")


def _quantile_per_row(x: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile along dim 1, as torch.quantile, without its input-size limit.

    Only the top (n - lo) values are needed, so topk replaces a full sort: at p = 0.995 that is the largest 0.5%.
    """
    n = x.shape[1]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    top = x.topk(n - lo, dim=1, largest=True, sorted=True).values  # (B, n - lo), descending: [..., hi, lo]
    at_lo, at_hi = top[:, n - lo - 1], top[:, max(n - hi - 1, 0)]
    return at_lo + frac * (at_hi - at_lo)


def threshold_x0(x0: Tensor, mode: str = "dynamic", percentile: float = 0.995) -> Tensor:
    """Static clamp to [-1, 1], or dynamic: s = max(1, quantile_p |x0|) per image, x0.clamp(-s, s) / s.

    Imagen Sec. 2.3. `percentile` in (0, 1] is p; the quantile interpolates linearly as torch.quantile does.
    """
    check_thresholding(mode, percentile)
    if mode == "none":
        return x0
    if mode == "static":
        return x0.clamp(-1.0, 1.0)
    flat = x0.float().abs().reshape(x0.shape[0], -1)  # (B, C*H*W)
    s = _quantile_per_row(flat, percentile).clamp(min=1.0)  # (B,)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
    return (torch.maximum(torch.minimum(x0.float(), s), -s) / s).to(x0.dtype)
