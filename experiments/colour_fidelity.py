"""Colour fidelity of a trained base stage: for single-object prompts ("a red circle"), how often the named
colour dominates the sample, against chance (1 / number of colours).

    # score the grid a training run wrote (its single-object prompts), e.g. the quickstart's final grid:
    python experiments/colour_fidelity.py outputs/quickstart/runs/<run>/samples
    # or sample afresh from a checkpoint, --per-colour prompts for each of the 8 colours:
    python experiments/colour_fidelity.py outputs/quickstart/runs/<run>/checkpoints/last.ckpt --per-colour 8
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagen_lit.data.world import COLOURS, SHAPES
from imagen_lit.eval.colour import colour_accuracy, dominant_colour
from imagen_lit.images import make_grid, save_png, split_grid, to_uint8

SINGLE = re.compile(rf"^an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})$")


def from_grid(samples_dir: Path, name: str) -> tuple[list[str], np.ndarray, dict]:
    """The single-object prompts of a SampleGrid folder and their tiles of <name>.png."""
    meta = json.loads((samples_dir / "prompts.json").read_text())
    layout = meta["grid"]
    grid = np.asarray(Image.open(samples_dir / f"{name}.png").convert("RGB"))
    tiles = split_grid(grid, len(meta["prompts"]), layout["image_size"], layout["nrow"], layout["pad"])
    keep = [i for i, p in enumerate(meta["prompts"]) if SINGLE.match(p)]
    return [meta["prompts"][i] for i in keep], tiles[keep], meta["sampling"]


def from_checkpoint(args: argparse.Namespace) -> tuple[list[str], np.ndarray, dict]:
    """Sample --per-colour single-object prompts per colour from a checkpoint (shapes cycle)."""
    from imagen_lit.build import load_stage

    stage, text_encoder, _ = load_stage(args.source)
    colours = [c for c in COLOURS for _ in range(args.per_colour)]
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {SHAPES[i % len(SHAPES)]}" for i, c in enumerate(colours)]
    chosen = {"guidance_weight": args.guidance_weight, "steps": args.steps, "thresholding": args.thresholding}
    overrides = {k: v for k, v in chosen.items() if v is not None}
    images = stage.generate(
        *text_encoder.encode(prompts), generator=torch.Generator().manual_seed(args.seed), **overrides
    )
    if args.save_grid:
        save_png(make_grid(images.float(), nrow=args.per_colour), args.save_grid)
    return prompts, to_uint8(images), {**stage.sampling, **overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a samples/ folder written by training, or a .ckpt")
    parser.add_argument("--grid-name", default="final", help="which grid of the samples folder to score")
    parser.add_argument("--per-colour", type=int, default=4, help="checkpoint mode: prompts per colour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-weight", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--thresholding", default=None, choices=["none", "static", "dynamic"])
    parser.add_argument("--save-grid", default=None, help="checkpoint mode: write the samples as a grid PNG")
    args = parser.parse_args()

    if args.source.is_dir():
        prompts, pixels, sampling = from_grid(args.source, args.grid_name)
    else:
        prompts, pixels, sampling = from_checkpoint(args)
    if not prompts:
        raise SystemExit(f"no single-object prompts ('a red circle') in {args.source}")
    colours = [SINGLE.match(p).group(1) for p in prompts]
    found = [dominant_colour(p) for p in pixels]
    result = {"samples": len(prompts), "colour_accuracy": colour_accuracy(pixels, colours),
              "chance": 1 / len(COLOURS), "sampling": sampling}
    print(json.dumps(result, indent=2))
    for p, f in zip(prompts, found, strict=True):
        print(f"{p:28s} -> {f}")


if __name__ == "__main__":
    main()
