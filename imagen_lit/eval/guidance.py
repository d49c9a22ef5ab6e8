"""Evaluate a trained stage on held-out scenes of the synthetic world: compositional alignment and domain FID at one
guidance setting (Imagen Sec. 4.1, Fig. A.10); sample.py's evaluate mode, swept over guidance weights by Hydra."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from imagen_lit.data.shards import synthetic_scene
from imagen_lit.data.world import Scene
from imagen_lit.eval.colour import colour_accuracy
from imagen_lit.eval.compositional import score_batch
from imagen_lit.eval.fid import FidEvaluator
from imagen_lit.images import to_uint8

# Imagen's guidance weights for the FID-vs-CLIP Pareto curves (Fig. A.10).
PAPER_GUIDANCE_WEIGHTS = (1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


def heldout_scenes(num_images: int, seed: int) -> list[Scene]:
    """The first num_images scenes of a world seed the training data does not use."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    return [synthetic_scene(seed, i) for i in range(num_images)]


def generate_for_scenes(
    stage: Any, encode: Callable[[list[str]], tuple[Tensor, Tensor]], scenes: list[Scene], *, seed: int,
    batch_size: int, use_ema: bool = True, callback: Callable[[dict], None] | None = None, **sampling: Any,
) -> Tensor:
    """Images [N, 3, H, W] in [-1, 1] for the scenes' captions; batch b uses a generator seeded (seed + b)."""
    out = []
    for b, start in enumerate(range(0, len(scenes), batch_size)):
        embeds, mask = encode([s.caption for s in scenes[start : start + batch_size]])
        generator = torch.Generator(device=stage.device).manual_seed(seed + b)
        out.append(stage.generate(embeds, mask, generator=generator, use_ema=use_ema, callback=callback,
                                  **sampling).float().cpu())
    return torch.cat(out)


def evaluate_images(images: Tensor, scenes: list[Scene], fid: FidEvaluator | None = None) -> dict[str, float]:
    """Compositional accuracy per category and overall (the alignment axis), plus domain FID/KID if given."""
    # Scored as saved: without thresholding, high guidance leaves x0 outside [-1, 1] and a PNG clips it.
    images = images.clamp(-1, 1)
    pixels = to_uint8(images)
    metrics = {f"alignment/{k}": float(v) for k, v in score_batch(pixels, scenes).items()}
    single = [i for i, s in enumerate(scenes) if s.kind == "single"]
    if single:  # colour alone, shape ignored: what a small model learns first (the quickstart's 32/32 check)
        colours = [scenes[i].objects[0].colour for i in single]
        metrics["alignment/colour_named"] = colour_accuracy(pixels[single], colours)
    if fid is not None:
        metrics.update({f"fidelity/{k}": v for k, v in fid.evaluate(images).items()})
    return metrics


def pareto_rows(rows: list[Mapping[str, Any]], x: str, y: str) -> dict[str, list[tuple[float, float, float]]]:
    """Group sweep rows into curves per thresholding mode: (guidance_weight, x, y) sorted by weight."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if row.get("status", "ok") != "ok" or row.get(x) in (None, "") or row.get(y) in (None, ""):
            continue
        curves.setdefault(str(row["thresholding"]), []).append(
            (float(row["guidance_weight"]), float(row[x]), float(row[y])))
    return {mode: sorted(points) for mode, points in sorted(curves.items())}
