"""A train.py run's timeline: when training began, and its step checkpoints (learning curves against minutes)."""

from __future__ import annotations

import re
from pathlib import Path

STEP = re.compile(r"step_(\d+)\.ckpt$")


def run_start(run_dir: str | Path) -> float:
    """Wall time (s since epoch) at which training began: the first logged train/loss, less its steps' share."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}: is it a train.py run folder?")
    losses = []
    for event_file in events:  # train.py's logger writes the scalars into the first file, the final hparams later
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            losses += acc.Scalars("train/loss")
    if len(losses) < 2:
        raise ValueError(f"{run_dir} logged train/loss fewer than twice: too short for a learning curve")
    first, last = min(losses, key=lambda e: e.step), max(losses, key=lambda e: e.step)
    per_step = (last.wall_time - first.wall_time) / max(1, last.step - first.step)
    return first.wall_time - (first.step + 1) * per_step


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's step_*.ckpt files, in step order."""
    found = sorted((int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("step_*.ckpt")
                   if (m := STEP.search(p.name)))
    if not found:
        raise FileNotFoundError(f"no step_*.ckpt under {run_dir}/checkpoints: "
                                f"train with callbacks.model_checkpoint.every_n_train_steps")
    return found


def checkpoint_minutes(run_dir: str | Path, ckpt: str | Path) -> float:
    """Training minutes at which the checkpoint was written (its file time since the run began)."""
    return (Path(ckpt).stat().st_mtime - run_start(run_dir)) / 60
