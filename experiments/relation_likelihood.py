"""Has the denoiser learned the relation words, whatever the sampler does? A diffusion-classifier test on held-out
spatial scenes: the true render x0 is noised at shared (t, eps) pairs, and the model's x0 error under the true
caption is compared with its error under a counterfactual caption (Li et al. 2023, "Your diffusion model is secretly
a zero-shot classifier"). Chance is 0.5 for each counterfactual; a model that reads the words prefers the truth.

    python experiments/relation_likelihood.py <run>/checkpoints/step_0003000.ckpt --num-scenes 200

Counterfactuals, all in one template ("{a} {relation} {b}") so that only the tested words differ:
  - relation: the relation replaced by its opposite ("left of" -> "right of"), the objects as they are;
  - colours:  the two objects' colours exchanged (binding), the relation as it is;
  - shapes:   the two objects' shapes exchanged;
  - absent:   the subject's colour replaced by one in neither object (a control the colour-learning model passes).
The x0 error is reported over all levels and over the noisiest half (t > 0.5), where the layout is decided.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.build import load_stage  # noqa: E402
from imagen_lit.data.render import render_scene  # noqa: E402
from imagen_lit.data.world import COLOURS, Scene, _article  # noqa: E402
from imagen_lit.eval.guidance import heldout_scenes  # noqa: E402
from imagen_lit.eval.stats import wilson_interval  # noqa: E402
from imagen_lit.models.text_cache import text_cache  # noqa: E402

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def as_tensor(scene: Scene, resolution: int) -> torch.Tensor:
    """The scene's true render as (3, H, W) in [-1, 1], as the training data decodes it."""
    pixels = torch.from_numpy(np.asarray(render_scene(scene, resolution), dtype=np.float32))  # (H, W, 3)
    return pixels.permute(2, 0, 1) / 127.5 - 1.0


def caption(scene: Scene, relation: str) -> str:
    """'{a} {relation} {b}' with the scene's first object as subject; sizes omitted so only the tested words vary."""
    a, b = (_article(f"{o.colour} {o.shape}") for o in scene.objects[:2])
    return f"{a} {PHRASE[relation]} {b}"


def counterfactuals(scene: Scene) -> dict[str, str]:
    """The true caption and one counterfactual per tested word class."""
    relation = scene.relations[0][1]
    colours, shapes, absent = copy.deepcopy(scene), copy.deepcopy(scene), copy.deepcopy(scene)
    (c0, c1), (s0, s1) = colours.objects[:2], shapes.objects[:2]
    c0.colour, c1.colour = c1.colour, c0.colour
    s0.shape, s1.shape = s1.shape, s0.shape
    used = {o.colour for o in scene.objects}
    absent.objects[0].colour = next(c for c in COLOURS if c not in used)
    return {"true": caption(scene, relation), "relation": caption(scene, OPPOSITE[relation]),
            "colours": caption(colours, relation), "shapes": caption(shapes, relation),
            "absent": caption(absent, relation)}


@torch.no_grad()
def x0_errors(stage, net, x0: torch.Tensor, embeds, mask, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared x0 error [B] of the net at (t, noise) for each image x0 [B, 3, H, W] and its caption."""
    diffusion, fn = stage.diffusion, stage._net_fn(net)
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, _ = diffusion.to_x0_eps(fn(x_t, t, text_embeds=embeds, text_mask=mask), x_t, t)
    return ((x0_hat - x0) ** 2).flatten(1).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path")
    parser.add_argument("--num-scenes", type=int, default=200, help="spatial scenes, the first of the held-out seed")
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--levels", type=int, default=16, help="noise levels t, stratified over (0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the summary here too")
    parser.add_argument("--per-level", action="store_true",
                        help="also print each level's log-SNR, its loss weight in x0 terms and the x0-MSE gaps")
    args = parser.parse_args()
    stage, encoder, cfg = load_stage(args.ckpt_path)
    net = stage.average.current(stage.ema)
    net = getattr(net, "module", net)
    resolution = net.image_size
    scenes = [s for s in heldout_scenes(8 * args.num_scenes, args.scene_seed) if s.kind == "spatial"]
    scenes = scenes[: args.num_scenes]
    gen = torch.Generator().manual_seed(args.seed)
    t_grid = (torch.arange(args.levels) + torch.rand(args.levels, generator=gen)) / args.levels  # stratified
    t_grid = t_grid.clamp(1e-3, 1 - 1e-3)
    kinds = ("true", "relation", "colours", "shapes", "absent")
    errors = {k: torch.zeros(len(scenes), args.levels) for k in kinds}  # [N, levels] per caption
    for start in range(0, len(scenes), 25):
        chunk = scenes[start : start + 25]
        x0 = torch.stack([as_tensor(s, resolution) for s in chunk])  # (b, 3, H, W) in [-1, 1]
        caps = [counterfactuals(s) for s in chunk]
        texts = {k: encoder.encode([c[k] for c in caps]) for k in kinds}  # once per chunk, not per level
        for j, t in enumerate(t_grid):
            noise = torch.randn(x0.shape, generator=gen)  # shared by every caption of this level
            tt = t.expand(len(chunk))
            for k, (embeds, mask) in texts.items():
                with text_cache(net):
                    errors[k][start : start + len(chunk), j] = x0_errors(stage, net, x0, embeds, mask, tt, noise)
    summary = {"ckpt": str(args.ckpt_path), "scenes": len(scenes), "levels": args.levels}
    for part, cols in (("all", slice(None)), ("t>0.5", t_grid > 0.5)):
        true = errors["true"][:, cols].mean(1)
        for k in kinds[1:]:
            other = errors[k][:, cols].mean(1)
            wins = int((true < other).sum())
            lo, hi = wilson_interval(wins, len(scenes))
            summary[f"{k}/{part}"] = {"prefers_true": wins / len(scenes), "ci95": [round(lo, 3), round(hi, 3)],
                                      "mean_gap": float((other - true).mean())}
            print(f"{k:>9} {part:>6}: prefers the true caption in {wins}/{len(scenes)} = {wins / len(scenes):.3f} "
                  f"[{lo:.2f}, {hi:.2f}] (chance 0.5), mean x0-MSE gap {float((other - true).mean()):.2e}")
    if args.per_level:  # where along the noise levels the relation (and the binding) is read, and what it weighs
        log_snr, x0_weight = stage.diffusion.schedule.log_snr(t_grid), stage.diffusion.x0_weight(t_grid)
        summary["per_level"] = []
        for j, t in enumerate(t_grid):
            gaps = {k: float((errors[k][:, j] - errors["true"][:, j]).mean()) for k in ("relation", "colours")}
            wins = int((errors["true"][:, j] < errors["relation"][:, j]).sum())
            w = float(x0_weight[j])
            summary["per_level"].append({"t": float(t), "log_snr": float(log_snr[j]), "x0_weight": w,
                                         "relation_wins": wins, **{f"{k}_gap": v for k, v in gaps.items()}})
            print(f"t {float(t):.3f} log-SNR {float(log_snr[j]):+6.2f} x0 weight {w:.3f}: relation gap "
                  f"{gaps['relation']:+.2e} (weighted {w * gaps['relation']:+.2e}, {wins}/{len(scenes)}), colours gap "
                  f"{gaps['colours']:+.2e}")
    if args.json:  # the summary as JSON
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
