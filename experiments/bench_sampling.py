"""Sampling time of a trained stage with the text side cached across steps (the default) and recomputed at every
step, in one run, same seed, with the samples compared bit for bit.

    python experiments/bench_sampling.py <run>/checkpoints/last.ckpt --batch 36 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagen_lit.stages.base as base  # noqa: E402
from imagen_lit.build import load_stage  # noqa: E402
from imagen_lit.data.world import sample_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--batch", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stage, encoder, _ = load_stage(args.ckpt)
    stage.eval()

    rng = random.Random(2000)
    embeds, mask = encoder.encode([sample_scene(rng).caption for _ in range(args.batch)])
    cached_fn = base.text_cache
    times, outs = {}, {}
    for name, ctx in (("cached", cached_fn), ("every step", lambda net: contextlib.nullcontext())):
        base.text_cache = ctx
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outs[name] = stage.generate(embeds, mask, generator=torch.Generator().manual_seed(0))
            runs.append(time.perf_counter() - start)
        times[name] = min(runs)
    base.text_cache = cached_fn
    settings = stage.sampling
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.batch} captions, "
          f"{settings['steps']} steps of {settings['sampler']}, guidance {settings['guidance_weight']}")
    for name, seconds in times.items():
        print(f"text side {name:10s}: {seconds:.2f} s (best of {args.repeats})")
    print(f"speed-up {times['every step'] / times['cached']:.3f}x; samples identical: "
          f"{torch.equal(outs['cached'], outs['every step'])}")

if __name__ == "__main__":
    main()
