"""Compositional accuracy against wall-clock training minutes: every step checkpoint of a train.py run scored on
held-out scenes, so one command shows whether a recipe still learns as fast (a benchmark, not a timed test).

    python train.py experiment=quickstart hydra.run.dir=outputs/lc/quickstart \
        callbacks.model_checkpoint.every_n_train_steps=300
    python experiments/learning_curve.py outputs/lc/quickstart --num-scenes 200 --png curve.png --json curve.json
    python experiments/learning_curve.py old=outputs/lc/old new=outputs/lc/new --png curves.png   # several runs
    python experiments/learning_curve.py --saved a.json b.json --png both.png   # re-plot saved curves, no scoring

Minutes are the checkpoint file's time since training began (the first logged train/loss, less the time of the
steps before it): the one-off set-up (rendering the world, encoding its captions) is left out, since later runs
reuse both. Each point is scored with the stage's own sampling settings at world seed 2000;
the interval is Wilson's 95%.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.build import load_stage  # noqa: E402
from imagen_lit.eval.curves import run_start, step_checkpoints  # noqa: E402
from imagen_lit.eval.guidance import evaluate_images, generate_for_scenes, heldout_scenes  # noqa: E402
from imagen_lit.eval.plot import draw_curves, save_plot  # noqa: E402
from imagen_lit.eval.stats import wilson_interval  # noqa: E402
from sample import resolve_device  # noqa: E402


def score(ckpt: Path, num_scenes: int, scene_seed: int, batch_size: int, device: str = "cpu") -> dict[str, float]:
    """Compositional accuracy of one checkpoint on the first num_scenes scenes of the held-out world seed."""
    stage, encoder, _ = load_stage(ckpt)
    stage.to(resolve_device(device))
    scenes = heldout_scenes(num_scenes, scene_seed)
    images = generate_for_scenes(stage, encoder.encode, scenes, seed=0, batch_size=batch_size)
    return {k.removeprefix("alignment/"): v for k, v in evaluate_images(images, scenes).items()}


def curve(run_dir: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    start = run_start(run_dir)
    rows = []
    for step, ckpt in step_checkpoints(run_dir):
        metrics = score(ckpt, args.num_scenes, args.scene_seed, args.batch_size, args.device)
        lo, hi = wilson_interval(round(metrics["overall"] * metrics["n_images"]), int(metrics["n_images"]))
        rows.append({"step": step, "minutes": (ckpt.stat().st_mtime - start) / 60, **metrics, "overall_lo": lo,
                     "overall_hi": hi})
        print(f"{run_dir.name:>24s} step {step:6d}  {rows[-1]['minutes']:6.2f} min  overall {metrics['overall']:.3f} "
              f"[{lo:.3f}, {hi:.3f}]  " + "  ".join(f"{c} {metrics[c]:.2f}" for c in
                                                 ("colour", "counting", "position", "binding") if c in metrics),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders, optionally labelled: label=folder")
    parser.add_argument("--saved", nargs="+", type=Path, default=[], help="--json files of earlier runs, added as is")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="where to sample: cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--png", type=Path, help="plot of overall accuracy against minutes, one curve per run")
    parser.add_argument("--json", type=Path, help="all rows, per run")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in args.runs)
    results = {label: rows for path in args.saved for label, rows in json.loads(path.read_text()).items()}
    results.update({label: curve(Path(folder), args) for label, folder in runs.items()})
    if not results:
        parser.error("give run folders to score, or --saved curves to plot")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.png:
        curves = {label: [(r["step"], r["minutes"], r["overall"]) for r in rows] for label, rows in results.items()}
        title = f"{args.num_scenes} held-out scenes, world seed {args.scene_seed}; labels: step"
        plot = draw_curves(curves, "training wall-clock minutes", "overall accuracy", title)
        save_plot(plot, args.png)


if __name__ == "__main__":
    main()
