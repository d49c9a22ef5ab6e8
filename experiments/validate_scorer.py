"""Validate the compositional scorer (imagen_lit/eval/compositional.py) on held-out renders of the synthetic world.

For each resolution it scores N scenes (seed 12345 by default; training data uses seed 0) under these conditions:
  real      renders with their own specs: should be >= 98% in every category
  degraded  the same renders blurred, colour-shifted and noised, like imperfect samples: how tolerant it is
  upscaled  (above 32px) 32px renders upscaled bicubically, like a base sample scored at a higher resolution
  shuffled  renders paired with another scene's spec (a derangement): near chance, a yes-sayer scores 100%
  chance    the shuffled pairs judged by an oracle that knows each image's true objects: the chance level that
            `shuffled` should match
  noise     uniform noise images with the true specs: there is nothing to find, so near zero

    python experiments/validate_scorer.py                      # 1000 scenes at 32px
    python experiments/validate_scorer.py --resolution 32 64 128 --json outputs/validate_scorer.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from imagen_lit.data import render_scene, synthetic_scene
from imagen_lit.data.world import BACKGROUND
from imagen_lit.eval.compositional import CATEGORIES, check_detections, scene_detections, score_batch, summarise


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def degrade(images: np.ndarray, rng: np.random.Generator, blur: float, shift: float, noise: float) -> np.ndarray:
    """Imperfect copies of uint8 renders [B, H, W, 3]: the objects' colours shifted by up to `shift` per channel
    (one shift per image), blurred by `blur` px (in 32px units) and Gaussian pixel noise of std `noise` added."""
    x = images.astype(np.float32)
    # How much of each pixel is object rather than the world's grey background: 1 inside, soft at the edges.
    foreground = np.clip(np.linalg.norm(x - np.float32(BACKGROUND), axis=-1, keepdims=True) / 80, 0, 1)
    x += foreground * rng.uniform(-shift, shift, size=(len(images), 1, 1, 3))  # (B, 1, 1, 3) broadcast
    sigma = blur * images.shape[1] / 32
    x = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0))
    x += rng.normal(0, noise, size=x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def validate(resolution: int, n: int, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Scores of each condition at one resolution."""
    rng = np.random.default_rng(seed)
    scenes = [synthetic_scene(seed, i) for i in range(n)]
    images = np.stack([np.asarray(render_scene(s, resolution)) for s in scenes])  # (N, H, W, 3)
    shuffled = [scenes[j] for j in derangement(n, rng)]
    inputs = {
        "real": (images, scenes),
        "degraded": (degrade(images, rng, args.blur, args.shift, args.pixel_noise), scenes),
        "shuffled": (images, shuffled),
        "noise": (rng.integers(0, 256, size=images.shape, dtype=np.uint8), scenes),
    }
    if resolution > 32:
        big = (resolution, resolution)
        upscaled = [np.asarray(render_scene(s, 32).resize(big, Image.Resampling.BICUBIC)) for s in scenes]
        inputs["upscaled"] = (np.stack(upscaled), scenes)
    results = {}
    for name, (batch, specs) in inputs.items():
        start = time.perf_counter()
        results[name] = score_batch(batch, specs)
        results[name]["ms_per_image"] = 1000 * (time.perf_counter() - start) / n
    oracle = [check_detections(scene_detections(true), spec) for true, spec in zip(scenes, shuffled, strict=True)]
    results["chance"] = summarise(oracle)
    return results


def table(resolution: int, results: dict[str, dict[str, float]]) -> str:
    """Per-image accuracy (per-check in brackets) per category and condition."""
    real = results["real"]
    conditions = [c for c in ("real", "degraded", "upscaled", "shuffled", "chance", "noise") if c in results]
    lines = [f"resolution {resolution}px, {real['n_images']} scenes: per-image accuracy % (per-check)"]
    lines.append(f"{'category':10s} {'images':>6s} " + " ".join(f"{c:>16s}" for c in conditions))
    for cat in (*CATEGORIES, "overall"):
        n = real["n_images"] if cat == "overall" else real[f"n_{cat}"]
        cells = []
        for cond in conditions:
            r = results[cond]
            checks = f"({100 * r[f'{cat}_checks']:5.1f})" if f"{cat}_checks" in r else " " * 7
            cells.append(f"{100 * r[cat]:7.1f}% {checks}" if cat in r else f"{'-':>16s}")
        lines.append(f"{cat:10s} {n:6d} " + " ".join(cells))
    times = [f"{results[c]['ms_per_image']:16.1f}" if c != "chance" else f"{'-':>16s}" for c in conditions]
    lines.append(f"{'ms/image':10s} {'':6s} " + " ".join(times))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[32], help="evaluation resolution(s)")
    parser.add_argument("--n", type=int, default=1000, help="held-out scenes per resolution")
    parser.add_argument("--seed", type=int, default=12345, help="dataset seed of the held-out scenes (train is 0)")
    parser.add_argument("--blur", type=float, default=0.6, help="degraded: Gaussian blur sigma in px at 32px")
    parser.add_argument("--shift", type=float, default=30.0, help="degraded: max shift of object colours per channel")
    parser.add_argument("--pixel-noise", type=float, default=10.0, help="degraded: pixel noise std")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be at least 2 (shuffling needs two scenes)")

    report = {"n": args.n, "seed": args.seed, "degrade": [args.blur, args.shift, args.pixel_noise], "results": {}}
    for resolution in args.resolution:
        results = validate(resolution, args.n, args.seed, args)
        report["results"][str(resolution)] = results
        print(table(resolution, results), end="\n\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
