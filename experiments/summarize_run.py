"""Figures of train.py runs read back from their TensorBoard event files: steps, throughput, MFU, peak memory, loss.

    python experiments/summarize_run.py outputs/zero_2b/deepspeed_zero2/first outputs/zero_2b/deepspeed_zero2/resumed
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PATTERNS = ("samples_per_sec", "mfu", "peak_", "train/loss", "grad_norm")


def summarize(run_dir: Path) -> dict[str, object]:
    """Last step; median of throughput/MFU over the second half of the run (past warm-up); last of the rest."""
    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}")
    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, object] = {"run": str(run_dir)}
    for tag in acc.Tags()["scalars"]:
        if not any(p in tag for p in PATTERNS) or "loss_t" in tag:
            continue
        scalars = acc.Scalars(tag)
        out["last_step"] = max(int(out.get("last_step", 0)), scalars[-1].step)
        if "per_sec" in tag or "mfu" in tag:
            late = [s.value for s in scalars[len(scalars) // 2 :]]
            out[f"{tag} (median, 2nd half)"] = round(statistics.median(late), 4)
        else:
            out[f"{tag} (first, last)"] = (round(scalars[0].value, 4), round(scalars[-1].value, 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps(summarize(run), indent=2))


if __name__ == "__main__":
    main()
