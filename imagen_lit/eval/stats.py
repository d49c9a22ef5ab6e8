"""Honest figures for compositional accuracy: 95% Wilson intervals and the chance level of each category."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
