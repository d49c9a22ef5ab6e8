"""Drawing the training noise levels in proportion to the loss weight: the same objective, less gradient noise.

The training loss is E_{t ~ U(t_range)}[w(t) mse(t)] (Imagen App. A, continuous time). Drawing t from a density
q(t) proportional to w(t) and weighing each sample by w(t) p(t) / q(t) (p uniform) has the same expectation, so the
same objective and the same optimum, but the per-sample weights are (nearly) equal: with min-SNR-gamma on v, uniform t
spends ~28% of a batch on log-SNR beyond +-3, which carries ~4% of the weight (Kingma & Gao 2023 Sec. 5 and EDM's
log-normal p_train, Karras et al. 2022 Sec. 5, make the same point from the other side).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class WeightedNoiseLevels:
    """t drawn piecewise-uniformly over `num_bins` bins of `t_range`, each bin with probability proportional to the
    mean loss weight inside it; `sample` returns t and the importance factor p(t) / q(t) = 1 / (num_bins P_bin)."""

    def __init__(self, weight_fn: Callable[[Tensor], Tensor], t_range: tuple[float, float], num_bins: int = 1024,
                 points_per_bin: int = 8):
        if num_bins < 1 or points_per_bin < 1:
            raise ValueError(f"num_bins and points_per_bin must be >= 1, got {num_bins} and {points_per_bin}")
        lo, hi = t_range
        self.t_lo, self.width = float(lo), (float(hi) - float(lo)) / num_bins
        offsets = (torch.arange(points_per_bin, dtype=torch.float64) + 0.5) / points_per_bin  # midpoint rule
        t = lo + self.width * (torch.arange(num_bins, dtype=torch.float64)[:, None] + offsets)  # (bins, points)
        mean_weight = weight_fn(t.reshape(-1).float()).double().reshape(num_bins, points_per_bin).mean(dim=1)
        if not torch.isfinite(mean_weight).all() or (mean_weight < 0).any() or mean_weight.sum() <= 0:
            raise ValueError("the loss weight must be finite, >= 0 and positive somewhere to draw t in proportion")
        floored = mean_weight.clamp(min=mean_weight.max() * 1e-12)  # no bin at probability 0: q > 0 where p > 0
        self.probs = (floored / floored.sum()).float()  # (bins,)

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """(t [B], importance [B]): E_q[importance f(t)] = E_{U(t_range)}[f(t)] for any f."""
        gen_device = generator.device if generator is not None else "cpu"
        probs = self.probs.to(gen_device)
        bins = torch.multinomial(probs, batch, replacement=True, generator=generator)  # (B,)
        u = torch.rand(batch, generator=generator, device=gen_device)
        t = self.t_lo + self.width * (bins.double() + u.double())
        importance = 1.0 / (probs.numel() * probs[bins])
        return t.float().to(device), importance.to(device)
