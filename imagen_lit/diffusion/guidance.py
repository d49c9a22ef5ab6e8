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
    guidance_weight: float,
) -> Tensor:
    """One forward pass on [cond; null], then out_u + w (out_c - out_u) (Ho & Salimans 2022 Eq. 6)."""
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **inputs)
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
    inputs = stacked_inputs(cond, null_cond, shared)  # once, not at every step: the same tensors each step
    return lambda x, t: _batched_cfg(model_fn, x, t, inputs, guidance_weight)
