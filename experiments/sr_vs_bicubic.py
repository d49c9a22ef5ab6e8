"""A super-resolution stage against bicubic upsampling on held-out synthetic scenes: PSNR and edge sharpness.

    python experiments/sr_vs_bicubic.py outputs/quickstart_sr64/runs/<run>/checkpoints/last.ckpt --num-scenes 64
    python experiments/sr_vs_bicubic.py <ckpt> --num-scenes 64 --aug-levels 0.1 0.0 --save-grid sr.png

Each scene is rendered at the stage's image_size; its low-res input is the antialiased downsample the training data
used (imagen_lit.data.lowres.downsample). Scenes come from indices >= HELD_OUT, which no training set reaches.
Sharpness is the mean squared gradient (gradient energy) of the output over that of the ground truth: 1 is as sharp
as the truth, blur gives less, noise and ringing more. (Not the mean |gradient|: across an edge it sums to the edge's
height however blurred the edge is.) The SR samples are stochastic, so their PSNR pays for any detail that differs
from the truth.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from imagen_lit.data import render_scene, synthetic_scene
from imagen_lit.data.lowres import downsample
from imagen_lit.images import make_grid, save_png

HELD_OUT = 10_000_000  # first scene index used here; training sets use 0 .. num_scenes - 1


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] [B, C, H, W] (peak-to-peak range 2)."""
    mse = (x.float() - ref.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-12))


def gradient_energy(x: Tensor) -> Tensor:
    """Per-image mean |grad|^2 of the luma of [B, 3, H, W] images, by forward differences."""
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).float()  # (B, H, W)
    dx = luma[:, :, 1:] - luma[:, :, :-1]  # (B, H, W-1)
    dy = luma[:, 1:, :] - luma[:, :-1, :]  # (B, H-1, W)
    return (dx[:, :-1, :] ** 2 + dy[:, :, :-1] ** 2).flatten(1).mean(1)  # (B,)


def sharpness(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image gradient-energy ratio, output over ground truth (1 = as sharp as the truth)."""
    return gradient_energy(x) / gradient_energy(ref).clamp(min=1e-12)


def bicubic(lowres: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic upsampling to size, clamped to [-1, 1]: the baseline, and what the U-Net concatenates."""
    return F.interpolate(lowres.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def held_out_scenes(num: int, resolution: int, lowres_size: int, seed: int = 0) -> tuple[Tensor, Tensor, list[str]]:
    """(high-res [N, 3, R, R], low-res [N, 3, r, r], captions) of scenes HELD_OUT .. HELD_OUT + num - 1."""
    scenes = [synthetic_scene(seed, HELD_OUT + i) for i in range(num)]
    pixels = np.stack([np.asarray(render_scene(s, resolution), dtype=np.uint8) for s in scenes])  # (N, R, R, 3)
    hires = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (N, 3, R, R)
    return hires, downsample(hires, lowres_size), [s.caption for s in scenes]


def evaluate(args: argparse.Namespace) -> list[dict]:
    """Rows of (method, aug_level, PSNR, sharpness) over the held-out scenes."""
    from imagen_lit.build import load_stage

    stage, text_encoder, _ = load_stage(args.ckpt)
    stage.to(args.device)
    if not hasattr(stage, "lowres_size"):
        raise ValueError(f"{args.ckpt} holds a {type(stage).__name__}, not a super-resolution stage (SRStage)")
    hires, lowres, captions = held_out_scenes(args.num_scenes, stage.unet.image_size, stage.lowres_size, args.seed)
    upsampled = bicubic(lowres, hires.shape[-2:])
    rows = [{"method": "bicubic", "aug_level": None, "psnr": psnr(upsampled, hires).mean().item(),
             "sharpness": sharpness(upsampled, hires).mean().item()}]
    overrides = {k: v for k, v in {"steps": args.steps, "guidance_weight": args.guidance_weight,
                                   "sampler": args.sampler}.items() if v is not None}
    grid = [upsampled[: args.grid_images]]
    for level in [stage.sampling["aug_level"]] if args.aug_levels is None else args.aug_levels:
        outs = []
        for start in range(0, args.num_scenes, args.batch_size):
            embeds, mask = text_encoder.encode(captions[start : start + args.batch_size])
            generator = torch.Generator(device=args.device).manual_seed(args.seed + start)
            outs.append(stage.generate(embeds, mask, lowres[start : start + args.batch_size], generator=generator,
                                       aug_level=level, **overrides).float().cpu())
        sr = torch.cat(outs)
        rows.append({"method": "sr", "aug_level": level, "psnr": psnr(sr, hires).mean().item(),
                     "sharpness": sharpness(sr, hires).mean().item(), "sampling": {**stage.sampling, **overrides}})
        grid.append(sr[: args.grid_images])
    if args.save_grid:
        columns = torch.stack([*grid, hires[: args.grid_images]], dim=1)  # (n, methods + 1, 3, R, R)
        save_png(make_grid(columns.flatten(0, 1), nrow=columns.shape[1]), args.save_grid)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="an SR stage checkpoint written by train.py")
    parser.add_argument("--num-scenes", type=int, default=64)
    parser.add_argument("--aug-levels", type=float, nargs="+", help="sampling aug_level(s); default: the stage's own")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance-weight", type=float, default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="where to sample, e.g. cuda (seeds differ per device)")
    parser.add_argument("--seed", type=int, default=0, help="world seed and sampling seed")
    parser.add_argument("--save-grid", default=None, help="PNG of rows: bicubic | SR per aug level | truth")
    parser.add_argument("--grid-images", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.num_scenes < 1:
        parser.error(f"--num-scenes must be >= 1, got {args.num_scenes}")
    rows = evaluate(args)
    print(f"{args.num_scenes} held-out scenes; sharpness = mean |grad|^2 / ground truth's (1.0 = as sharp)")
    print(f"{'method':<8} {'aug_level':>9} {'PSNR dB':>8} {'sharpness':>9}")
    for r in rows:
        level = "-" if r["aug_level"] is None else f"{r['aug_level']:.2f}"
        print(f"{r['method']:<8} {level:>9} {r['psnr']:>8.2f} {r['sharpness']:>9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
