"""Colour fidelity of a trained base stage: for single-object prompts ("a red circle"), how often the named
colour dominates the sample, against chance (1 / number of colours).

    python experiments/colour_fidelity.py outputs/quickstart/runs/<run>/checkpoints/last.ckpt --per-colour 4
"""

from __future__ import annotations

import argparse
import json

import torch

from imagen_lit.build import load_stage
from imagen_lit.data.world import COLOURS, SHAPES
from imagen_lit.eval.colour import colour_accuracy, dominant_colour
from imagen_lit.images import make_grid, save_png, to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--per-colour", type=int, default=4, help="prompts per colour (shapes cycle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-weight", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--grid", default=None, help="write the samples as a grid PNG here")
    args = parser.parse_args()

    stage, text_encoder, _ = load_stage(args.ckpt)
    colours = [c for c in COLOURS for _ in range(args.per_colour)]
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {SHAPES[i % len(SHAPES)]}" for i, c in enumerate(colours)]
    overrides = {k: v for k, v in {"guidance_weight": args.guidance_weight, "steps": args.steps}.items() if v}
    images = stage.generate(
        *text_encoder.encode(prompts), generator=torch.Generator().manual_seed(args.seed), **overrides
    )
    pixels = to_uint8(images)
    accuracy = colour_accuracy(pixels, colours)
    found = [dominant_colour(p) for p in pixels]
    if args.grid:
        save_png(make_grid(images.float(), nrow=args.per_colour), args.grid)
    print(json.dumps({"samples": len(prompts), "colour_accuracy": accuracy, "chance": 1 / len(COLOURS),
                      "sampling": {**stage.sampling, **overrides}}, indent=2))
    for p, f in zip(prompts, found, strict=True):
        print(f"{p:28s} -> {f}")


if __name__ == "__main__":
    main()
