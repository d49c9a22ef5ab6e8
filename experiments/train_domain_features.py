"""Train the domain feature network of domain_fid / domain_kid on renders of the synthetic world.

The network learns to name each scene's colours, shapes, size words, coarse layout (which cells of a 4x4 grid hold
an object), object count and scene kind from renders at 32 and 64 px; its penultimate layer is the feature space.
Training is seeded and deterministic (same machine, same torch: same bytes), so the packaged weights can be rebuilt:

    python experiments/train_domain_features.py --out imagen_lit/eval/data/domain_features.safetensors

Prints held-out attribute accuracy (scenes of another seed) per resolution, and writes <out>.json beside the
weights with the config, the training arguments, the accuracies and the weights' sha256. Then it scores a sanity
table of domain FID/KID against held-out reference renders (real renders of another seed, noisy, blurred, channel-
swapped renders, pure noise); `--check WEIGHTS` prints that table alone for existing weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from imagen_lit.data.shards import synthetic_scene
from imagen_lit.eval.features import (
    HEAD_SIZES,
    MULTILABEL,
    DomainFeatureConfig,
    DomainFeatureNet,
    load_domain_features,
    render_scenes,
    save_domain_features,
    scene_targets,
)
from imagen_lit.eval.fid import FidEvaluator, SyntheticReference


def dataset(seed: int, count: int, resolutions: list[int]) -> tuple[dict[int, Tensor], dict[str, Tensor]]:
    """Renders {resolution: uint8 [N, 3, R, R]} of scenes 0..count-1 of `seed`, and their stacked targets."""
    images = {r: render_scenes(seed, 0, count, r) for r in resolutions}
    per_scene = [scene_targets(synthetic_scene(seed, i)) for i in range(count)]
    targets = {name: torch.stack([t[name] for t in per_scene]) for name in HEAD_SIZES}
    return images, targets


def loss_fn(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """Sum over heads: binary cross-entropy summed over labels for multi-label heads, cross-entropy for the rest."""
    total = logits["colours"].new_zeros(())
    for name, out in logits.items():
        if name in MULTILABEL:
            # summed over labels: each label weighs like a class head (a mean starves the 8-colour head)
            total = total + F.binary_cross_entropy_with_logits(out, targets[name], reduction="none").sum(1).mean()
        else:
            total = total + F.cross_entropy(out, targets[name])
    return total


@torch.no_grad()
def accuracy(net: DomainFeatureNet, images: Tensor, targets: dict[str, Tensor], batch: int = 500) -> dict[str, float]:
    """Per head: exact-match accuracy (the whole set right for multi-label heads), and per-label for those."""
    logits = {name: [] for name in HEAD_SIZES}
    for i in range(0, len(images), batch):
        for name, out in net.predict(images[i : i + batch]).items():
            logits[name].append(out)
    result = {}
    for name in HEAD_SIZES:
        out = torch.cat(logits[name])
        if name in MULTILABEL:
            hit = (out > 0).float() == targets[name]  # [N, n]
            result[name] = hit.all(1).float().mean().item()
            result[f"{name}_per_label"] = hit.float().mean().item()
        else:
            result[name] = (out.argmax(1) == targets[name]).float().mean().item()
    return {k: round(v, 4) for k, v in result.items()}


def corruptions(real: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The sanity table's image sets, all uint8 [N, 3, R, R] made from the held-out renders `real`."""
    g = torch.Generator().manual_seed(seed)
    x = real.float()
    noisy = lambda sigma: (x + sigma * 127.5 * torch.randn(x.shape, generator=g)).clamp(0, 255).round().byte()
    r = real.shape[-1]
    down = F.interpolate(x, size=(r // 2, r // 2), mode="bilinear", antialias=True)  # [N, 3, R/2, R/2]
    return {
        "real (held-out renders)": real,
        "noise sigma=0.05": noisy(0.05),  # sigma in [-1, 1] units
        "noise sigma=0.2": noisy(0.2),
        "blurred (2x down, up)": F.interpolate(down, size=(r, r), mode="bilinear").clamp(0, 255).round().byte(),
        "channels RGB->BRG": real[:, [2, 0, 1]],
        "pure noise": torch.randint(0, 256, real.shape, generator=g, dtype=torch.uint8),
    }


def sanity_table(
    net: DomainFeatureNet, resolutions: list[int], ref_seed: int, ref_n: int, seed: int, n: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{resolution: {condition: scores}}: domain FID/KID of each corruption against held-out reference renders."""
    table = {}
    for r in resolutions:
        ev = FidEvaluator(
            net, SyntheticReference(seed=ref_seed, num_images=ref_n, resolution=r), kid_subset_size=min(1000, n)
        )
        table[str(r)] = {
            name: {k: round(v, 6) for k, v in ev.evaluate(x).items()}
            for name, x in corruptions(render_scenes(seed, 0, n, r)).items()
        }
        for name, scores in table[str(r)].items():
            print(f"{r:4d} px  {name:26s} " + "  ".join(f"{k} {v:9.4f}" for k, v in scores.items()), flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors); a .json goes beside it")
    parser.add_argument("--num-scenes", type=int, default=24000, help="training scenes (each rendered per resolution)")
    parser.add_argument("--heldout-scenes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    parser.add_argument("--data-seed", type=int, default=101, help="synthetic-world seed of the training scenes")
    parser.add_argument("--heldout-seed", type=int, default=102, help="synthetic-world seed of held-out scenes")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, default=1, help="more than the free cores slows training a lot")
    parser.add_argument("--config", default="{}", help="JSON overrides of DomainFeatureConfig fields")
    parser.add_argument("--check", default=None, help="only print the sanity table for these weights ('packaged')")
    parser.add_argument("--ref-seed", type=int, default=1000, help="sanity table: reference renders' world seed")
    parser.add_argument("--ref-images", type=int, default=2000)
    parser.add_argument("--check-seed", type=int, default=1001, help="sanity table: held-out renders' world seed")
    parser.add_argument("--check-images", type=int, default=1000)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    table_args = (args.resolutions, args.ref_seed, args.ref_images, args.check_seed, args.check_images)
    if args.check is not None:
        sanity_table(load_domain_features(None if args.check == "packaged" else args.check), *table_args)
        return
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t0 = time.time()
    images, targets = dataset(args.data_seed, args.num_scenes, args.resolutions)
    held_images, held_targets = dataset(args.heldout_seed, args.heldout_scenes, args.resolutions)
    render_s = time.time() - t0
    print(f"rendered {args.num_scenes} + {args.heldout_scenes} scenes at {args.resolutions} px in {render_s:.1f} s")

    config = DomainFeatureConfig.from_dict({**DomainFeatureConfig().to_dict(), **json.loads(args.config)})
    net = DomainFeatureNet(config).train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    order = torch.Generator().manual_seed(args.seed)
    t1, running = time.time(), 0.0
    for step in range(args.steps):
        resolution = args.resolutions[step % len(args.resolutions)]  # alternate resolutions batch by batch
        idx = torch.randint(args.num_scenes, (args.batch_size,), generator=order)
        loss = loss_fn(net.predict(images[resolution][idx]), {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:5d}  loss {running / 100:.4f}  {(step + 1) / (time.time() - t1):.1f} steps/s")
            running = 0.0
    train_s = time.time() - t1
    net.eval().requires_grad_(False)
    # standardise the features on (up to) 4000 training renders of each resolution
    net.calibrate(images[r][i : i + 500] for r in args.resolutions for i in range(0, min(4000, args.num_scenes), 500))

    heldout = {r: accuracy(net, held_images[r], held_targets) for r in args.resolutions}
    print(json.dumps({"train_seconds": round(train_s, 1), "heldout_accuracy": heldout}, indent=1))
    table = sanity_table(net, *table_args)
    info = save_domain_features(
        net,
        args.out,
        extra={
            "training": {
                **{k: v for k, v in vars(args).items() if k not in ("out", "threads")},
                "train_seconds": round(train_s, 1),
                "render_seconds": round(render_s, 1),
                "torch": torch.__version__,
                "machine": platform.machine(),
            },
            "heldout_accuracy": {str(r): acc for r, acc in heldout.items()},
            "sanity_table": table,
        },
    )
    print(json.dumps({"file_sha256": info["file_sha256"], "parameters": info["parameters"]}))


if __name__ == "__main__":
    main()
