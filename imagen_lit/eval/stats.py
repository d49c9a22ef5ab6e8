"""Honest figures: 95% Wilson intervals and chance levels for compositional accuracy, a paired bootstrap for FID."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from imagen_lit.data.world import Scene
from imagen_lit.eval.compositional import CATEGORIES, check_detections, scene_detections, summarise

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when n = 0."""
    if successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no float residue past the estimate
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 of two independent proportions with Newcombe's (1998) hybrid score 95% interval, built from each
    one's Wilson bounds: (difference, lo, hi)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def homogeneity_p(counts: Sequence[tuple[int, int]]) -> float:
    """p-value of Pearson's chi-square test that (successes, n) of each group (a configuration's training seeds)
    share one proportion: small p says the seeds differ beyond sampling, so pooled Wilson intervals understate."""
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if len(counts) < 2 or k in (0, n):
        return 1.0
    p = k / n
    stat = sum((ki - ni * p) ** 2 / (ni * p * (1 - p)) for ki, ni in counts)  # = sum over both cells of (O - E)^2 / E
    dof = torch.tensor((len(counts) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))  # chi-square survival


def rank_test_p(higher: Sequence[float], lower: Sequence[float]) -> tuple[float, float]:
    """Exact one-sided Mann-Whitney test over training runs that `higher` exceeds `lower`: (U, p), U the pairs where
    it does (ties count half) and p the share of all splits of the pooled values into groups of these sizes with at
    least that U. Three runs against three can reach p = 0.05 at best, four against four 0.014."""
    if not higher or not lower:
        raise ValueError(f"a rank test needs runs on both sides, got {len(higher)} and {len(lower)}")

    def u_stat(a: Sequence[float], b: Sequence[float]) -> float:
        return sum((x > y) + 0.5 * (x == y) for x in a for y in b)

    values, m = [*higher, *lower], len(higher)
    u = u_stat(higher, lower)
    at_least = sum(u_stat([values[i] for i in idx], [v for i, v in enumerate(values) if i not in idx]) >= u - 1e-9
                   for idx in itertools.combinations(range(len(values)), m))
    return u, at_least / math.comb(len(values), m)


def chance_levels(scenes: Sequence[Scene]) -> dict[str, float]:
    """Per-category accuracy of an image that ignores its caption: each scene's spec judged on the true objects
    of the next scene (a cyclic derangement), so the layout, shapes and colours are the world's, not the caption's."""
    if len(scenes) < 2:
        raise ValueError(f"chance levels need at least 2 scenes, got {len(scenes)}")
    found = [scene_detections(s) for s in scenes]
    checks = [check_detections(found[(i + 1) % len(scenes)], spec) for i, spec in enumerate(scenes)]
    return summarise(checks)


def with_intervals(metrics: dict[str, float], chance: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """{category or 'overall': {accuracy, lo, hi, n, chance}} from score_batch's keys (accuracy and n_<category>)."""
    out = {}
    for name in (*CATEGORIES, "overall"):
        if name not in metrics:
            continue
        n = int(metrics["n_images"] if name == "overall" else metrics[f"n_{name}"])
        k = round(metrics[name] * n)
        lo, hi = wilson_interval(k, n)
        out[name] = {"accuracy": metrics[name], "lo": lo, "hi": hi, "n": n}
        if chance is not None and name in chance:
            out[name]["chance"] = chance[name]
    return out


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] (as torchmetrics') of features [N, D], in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(features: Tensor, reference: Tensor | tuple[Tensor, Tensor]) -> float:
    """FID between features [N, D] and a reference set [M, D] (or its gaussian_stats):
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al.)."""
    mu_a, cov_a = gaussian_stats(features)
    mu_b, cov_b = reference if isinstance(reference, tuple) else gaussian_stats(reference)
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()  # tr (S1 S2)^(1/2)
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * root_trace)


def paired_fid_difference(features: Tensor, baseline: Tensor, reference: Tensor, num_resamples: int = 200,
                          seed: int = 0) -> tuple[float, float, float]:
    """FID(features) - FID(baseline) and its 95% paired-bootstrap interval: both sets [N, D] come from the same N
    scenes (row i of each), and every resample draws the same scenes for both."""
    if features.shape != baseline.shape:
        raise ValueError(f"paired sets need one row per scene in both, got {tuple(features.shape)} and "
                         f"{tuple(baseline.shape)}")
    reference = gaussian_stats(reference)  # once, not twice per resample
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(num_resamples):
        idx = torch.randint(len(features), (len(features),), generator=g)
        diffs.append(frechet_distance(features[idx], reference) - frechet_distance(baseline[idx], reference))
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    lo, hi = torch.tensor(diffs, dtype=torch.float64).quantile(q).tolist()
    return frechet_distance(features, reference) - frechet_distance(baseline, reference), lo, hi
