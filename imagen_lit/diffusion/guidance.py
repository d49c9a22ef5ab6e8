"""Classifier-free guidance as a closure around the network (Imagen Sec. 2.2, Ho & Salimans 2022)."""

from collections.abc import Callable

import torch
from torch import Tensor


def check_guidance_weight(guidance_weight: float) -> None:
    """Raise ValueError for a negative guidance weight (w = 0 is unconditional, w = 1 conditional)."""
    if guidance_weight < 0:
        raise ValueError(f"guidance_weight must be >= 0, got {guidance_weight}")


def _twice(v: Tensor | None) -> Tensor | None:
    return None if v is None else torch.cat([v, v])


def _batched_cfg(
    model_fn: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    null_cond: dict[str, Tensor],
    guidance_weight: float,
    shared: dict[str, Tensor],
) -> Tensor:
    """One forward pass on [cond; null], then out_u + w (out_c - out_u) (Ho & Salimans 2022 Eq. 6)."""
    cond_in = {}
    for k, v in cond.items():
        u = null_cond[k]
        cond_in[k] = None if v is None else torch.cat([v, u])  # (2B, ...): conditional first
    shared_in = {k: _twice(v) for k, v in shared.items()}
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **cond_in, **shared_in)
    out_c, out_u = out.chunk(2)
    # Mixing the raw output equals mixing eps: eps, v and x0 are affine in the output with coefficients shared
    # by both halves (same x_t, same t), and the weights (w, 1 - w) sum to 1, so the affine map commutes.
    return out_u + guidance_weight * (out_c - out_u)


def guided_model_fn(
    model_fn: Callable[..., Tensor],
    cond: dict[str, Tensor],
    null_cond: dict[str, Tensor] | None,
    guidance_weight: float,
    shared: dict[str, Tensor] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """fn(x_t, t) giving the classifier-free guided network output (Imagen Sec. 2.2, Ho & Salimans 2022)."""
    check_guidance_weight(guidance_weight)
    shared = shared or {}
    if null_cond is not None and set(null_cond) != set(cond):
        raise ValueError(f"null_cond must have the same keys as cond; got {sorted(null_cond)} and {sorted(cond)}")
    if guidance_weight == 1.0 or null_cond is None:
        return lambda x, t: model_fn(x, t, **cond, **shared)
    return lambda x, t: _batched_cfg(model_fn, x, t, cond, null_cond, guidance_weight, shared)
