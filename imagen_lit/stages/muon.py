"""Muon (Jordan et al. 2024; Liu et al. 2025): momentum orthogonalised by a Newton-Schulz iteration for the U-Net's
weight matrices, AdamW for everything else. Not in Imagen, which trains with Adam (App. F); a recipe lever for the
step-bound CPU runs."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.adam import adam

# The quintic Newton-Schulz coefficients of Jordan et al. (2024): they push every singular value of a matrix with
# spectral norm <= 1 into roughly [0.7, 1.2] in five steps, which is as orthogonal as the update needs to be.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz_flops(rows: int, cols: int, steps: int = 5) -> tuple[int, int]:
    """Multiply-adds x 2 of `orthogonalise` on one (rows, cols) matrix: (the direct iteration, the Gram one)."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m**3), 4 * m * m * n + 2 * (4 * steps - 3) * m**3


def orthogonalise(update: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The nearest semi-orthogonal matrices U V^T of (..., m, n) updates U S V^T, approximately (Newton-Schulz).

    Each step maps every singular value s to a s + b s^3 + c s^5. For a wide matrix (n well above m) the same
    polynomial runs on the (m, m) Gram matrix instead: X_k = P_k G with P_k a polynomial in S = G G^T, so
    P_{k+1} = f(A_k) P_k with A_k = P_k S P_k = f(A_{k-1})^2 A_{k-1}, and only the first and last products touch
    the long side.
    """
    if update.ndim < 2:
        raise ValueError(f"orthogonalise takes (..., m, n) matrices, got {tuple(update.shape)}; reshape to (out, -1)")
    a, b, c = NS_COEFFS
    x = update.to(dtype)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT  # (..., short, long): the Gram matrix below is the small one
    # Frobenius norm >= spectral norm, so every singular value starts <= 1
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    direct, gram_flops = newton_schulz_flops(x.shape[-2], x.shape[-1], steps)
    if gram_flops < direct:
        x = x.float()  # the Gram matrix squares the condition number: keep it in fp32
        gram = x @ x.mT  # (..., short, short): A_0 = S
        eye = torch.eye(x.shape[-2], dtype=x.dtype)
        poly = None
        for k in range(steps):
            step = a * eye + b * gram + c * gram @ gram  # f(A_k)
            poly = step if poly is None else step @ poly  # P_{k+1} = f(A_k) P_k, P_0 = I
            if k < steps - 1:
                gram = step @ step @ gram  # A_{k+1} = f(A_k)^2 A_k: everything commutes with S
        x = poly @ x  # (..., short, long)
    else:
        for _ in range(steps):
            gram = x @ x.mT  # (..., short, short)
            x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if transposed else x).to(update.dtype)


def uses_muon(param: torch.Tensor, min_dim: int) -> bool:
    """A weight matrix (linear or conv, viewed as (out, in * k * k)) with both sides >= min_dim.

    This leaves biases, norm scales, embeddings of a few rows, the input conv (in * k * k = 27 for RGB) and the
    output conv (3 rows) to AdamW, as Muon's authors do.
    """
    if param.ndim < 2:
        return False
    rows, cols = param.shape[0], param[0].numel()
    return min(rows, cols) >= min_dim


class Muon(Optimizer):
    """Nesterov momentum orthogonalised per matrix, scaled to AdamW's update RMS (0.2 sqrt(max side), Liu et al. 2025)
    so one learning rate and one schedule serve both groups; AdamW for the parameters `uses_muon` rejects."""

    needs_whole_matrices = True  # DeepSpeed ZeRO's flat partitions are refused (stages.optim.refuse_partitioned)

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "float32",
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        min_dim: int = 32,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if ns_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ns_dtype must be float32 or bfloat16, got {ns_dtype!r}")
        params = list(params)
        if params and isinstance(params[0], dict):
            raise ValueError("Muon splits the parameters itself; pass a flat iterable of parameters, not groups")
        matrices = [p for p in params if p.requires_grad and uses_muon(p, min_dim)]
        others = [p for p in params if p.requires_grad and not uses_muon(p, min_dim)]
        if not matrices:
            raise ValueError(f"no weight matrix has both sides >= min_dim={min_dim}; lower min_dim or use AdamW")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps)
        groups = [{"params": matrices, "use_muon": True}]
        if others:
            groups.append({"params": others, "use_muon": False})
        super().__init__(groups, defaults)
        self.ns_dtype = getattr(torch, ns_dtype)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        by_shape: dict[tuple[int, int], list[tuple[nn.Parameter, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.ndim < 2:
                raise ValueError(f"Muon got a flattened {p.ndim}-D weight (a DeepSpeed ZeRO partition?); use AdamW")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(p.grad)
            update = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            matrix = update.reshape(update.shape[0], -1)  # (out, in * k * k)
            by_shape.setdefault(tuple(matrix.shape), []).append((p, matrix))
        for (rows, cols), items in by_shape.items():  # one batched iteration per shape
            stacked = torch.stack([m for _, m in items])  # (k, rows, cols)
            ortho = orthogonalise(stacked, group["ns_steps"], self.ns_dtype)
            scale = 0.2 * math.sqrt(max(rows, cols))  # an orthogonal (m, n) matrix has RMS 1 / sqrt(max(m, n))
            for (p, _), o in zip(items, ortho, strict=True):
                if decay:
                    p.mul_(1.0 - lr * decay)
                p.add_(o.view_as(p), alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        """torch's own AdamW (decoupled weight decay) on the parameters that are not Muon matrices."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if "step" not in self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
             [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], decoupled_weight_decay=True,
             amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
             eps=group["eps"], maximize=False)
