"""Milliseconds of one optimizer step on a composed config's U-Net: AdamW against Muon's Newton-Schulz settings.

    python experiments/bench_muon.py experiment=quickstart
    python experiments/bench_muon.py experiment=world --repeats 10

Random gradients stand in for the backward pass, so the figure is the optimizer's own cost per step, which does not
grow with the batch (experiments/profile_step.py times the whole step). A benchmark, not a timed test: compare the
ratios of one run, each on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagen_lit.stages.muon import Muon, newton_schulz_flops  # noqa: E402
from imagen_lit.sweep import register_resolvers  # noqa: E402


def time_step(opt: torch.optim.Optimizer, repeats: int) -> float:
    """Median milliseconds of opt.step() after one warm-up step."""
    opt.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=quickstart")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    unet = instantiate(cfg.unet, text_dim=instantiate(cfg.text_encoder).dim)
    torch.manual_seed(0)
    for p in unet.parameters():
        p.grad = torch.randn_like(p)
    matrices = Muon(unet.parameters()).param_groups[0]["params"]  # the split Muon makes itself
    gflop = sum(min(newton_schulz_flops(p.shape[0], p[0].numel())) for p in matrices) / 1e9
    total = sum(p.numel() for p in unet.parameters())
    print(f"{type(unet).__name__}: {total / 1e6:.1f}M parameters, {len(matrices)} Muon matrices holding "
          f"{sum(p.numel() for p in matrices) / total:.1%}, Newton-Schulz {gflop:.1f} GFLOP a step (5 iterations); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"AdamW: {time_step(torch.optim.AdamW(unet.parameters()), args.repeats):.0f} ms/step")
    for dtype in ("float32", "bfloat16"):
        for steps in (5, 3):
            ms = time_step(Muon(unet.parameters(), ns_steps=steps, ns_dtype=dtype), args.repeats)
            print(f"Muon ns_steps={steps} ns_dtype={dtype}: {ms:.0f} ms/step")


if __name__ == "__main__":
    main()
