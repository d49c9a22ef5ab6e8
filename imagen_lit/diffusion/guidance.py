"""Classifier-free guidance as a closure around the network (Imagen Sec. 2.2, Ho & Salimans 2022)."""

from collections.abc import Callable

import torch
from torch import Tensor


def check_guidance_weight(guidance_weight: float) -> None:
    """Raise ValueError for a negative guidance weight (w = 0 is unconditional, w = 1 conditional)."""
    if guidance_weight < 0:
        raise ValueError(f"guidance_weight must be >= 0, got {guidance_weight}")


def check_guidance_interval(guidance_interval) -> tuple[float, float] | None:
    """The interval as (t_lo, t_hi) with 0 <= t_lo < t_hi <= 1, or None; ValueError otherwise."""
    if guidance_interval is None:
        return None
    try:
        lo, hi = (float(v) for v in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be [t_lo, t_hi] (noise levels in [0, 1]) or null, "
                         f"got {guidance_interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= t_lo < t_hi <= 1, got [{lo}, {hi}]")
    return lo, hi


def _twice(v: Tensor | None) -> Tensor | None:
    return None if v is None else torch.cat([v, v])


def stacked_inputs(
    cond: dict[str, Tensor], null_cond: dict[str, Tensor], shared: dict[str, Tensor]
) -> dict[str, Tensor | None]:
    """Network inputs of the [cond; null] batch: (2B, ...) each, conditional first, shared ones twice."""
    inputs = {k: None if v is None else torch.cat([v, null_cond[k]]) for k, v in cond.items()}
    inputs.update({k: _twice(v) for k, v in shared.items()})
    return inputs


def _batched_cfg(
    model_fn: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    inputs: dict[str, Tensor | None],
    guidance_weight: float | Tensor,
) -> Tensor:
    """One forward pass on [cond; null], then out_u + w (out_c - out_u) (Ho & Salimans 2022 Eq. 6)."""
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **inputs)
    out_c, out_u = out.chunk(2)
    # Mixing the raw output equals mixing eps: eps, v and x0 are affine in the output with coefficients shared
    # by both halves (same x_t, same t), and the weights (w, 1 - w) sum to 1, so the affine map commutes.
    return out_u + guidance_weight * (out_c - out_u)


def _interval_cfg(
    model_fn: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    inputs: dict[str, Tensor | None],
    guidance_weight: float,
    interval: tuple[float, float],
) -> Tensor:
    """Guidance weight w for t in [t_lo, t_hi] and 1 elsewhere (Kynkaanniemi et al. 2024); the null branch runs
    only when some sample of the batch is inside the interval."""
    inside = (t >= interval[0]) & (t <= interval[1])  # (B,)
    if not bool(inside.any()):
        return model_fn(x, t, **cond)
    w = torch.where(inside, guidance_weight, 1.0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    return _batched_cfg(model_fn, x, t, inputs, w)


def guided_model_fn(
    model_fn: Callable[..., Tensor],
    cond: dict[str, Tensor],
    null_cond: dict[str, Tensor] | None,
    guidance_weight: float,
    shared: dict[str, Tensor] | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """fn(x_t, t) giving the classifier-free guided network output (Imagen Sec. 2.2, Ho & Salimans 2022).

    guidance_interval (t_lo, t_hi): guide only at those noise levels, the conditional model elsewhere.
    """
    check_guidance_weight(guidance_weight)
    interval = check_guidance_interval(guidance_interval)
    shared = shared or {}
    if null_cond is not None and set(null_cond) != set(cond):
        raise ValueError(f"null_cond must have the same keys as cond; got {sorted(null_cond)} and {sorted(cond)}")
    if guidance_weight == 1.0 or null_cond is None:
        return lambda x, t: model_fn(x, t, **cond, **shared)
    inputs = stacked_inputs(cond, null_cond, shared)  # once, not at every step: the same tensors each step
    if interval is not None:
        cond_only = {**cond, **shared}
        return lambda x, t: _interval_cfg(model_fn, x, t, cond_only, inputs, guidance_weight, interval)
    return lambda x, t: _batched_cfg(model_fn, x, t, inputs, guidance_weight)
