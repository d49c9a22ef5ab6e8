"""The SR stage judged where it is used: on the base stage's own samples of held-out scenes, the cascade's output
against bicubic upsampling of the same base samples, on compositional accuracy and domain FID at the SR size.

    python experiments/cascade_vs_bicubic.py outputs/quickstart/<date>/cascade --num-scenes 200 --aug-levels 0.0 0.1

Every row shares the base samples (same scenes, seeds and settings); bicubic and each aug_level differ only in how
the 32x32 samples become 64x64. Intervals are Wilson's 95% over scenes. FID needs >= 2 images; KID is left out.
--base-samples FILE keeps the base samples between calls (one aug_level per call, as the study driver makes them);
they are reused only while the base stage's weights, sampling settings, captions and batch size are the same.
--set STAGE.KEY=VALUE replaces one stored sampling setting of a stage, e.g. --set base16.guidance_weight=1.5.
Each cascade row's FID minus bicubic's comes with a 95% paired-bootstrap interval over scenes (--fid-resamples).
--truth adds the scenes' own renders at the SR size and bicubic upsampling of their renders at the base size: the
FID floor at this number of scenes, and how much FID perfect sharpening alone could buy over bicubic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.cascade import Cascade  # noqa: E402
from imagen_lit.eval.features import render_scenes  # noqa: E402
from imagen_lit.eval.fid import build_fid_evaluator  # noqa: E402
from imagen_lit.eval.guidance import evaluate_images, heldout_scenes  # noqa: E402
from imagen_lit.eval.stats import paired_fid_difference, wilson_interval  # noqa: E402
from imagen_lit.images import make_grid, save_png  # noqa: E402
from imagen_lit.study_report import NAMES  # noqa: E402  (the scorer's 'colour' category is single objects)

CATEGORIES = ("colour", "counting", "position", "binding", "overall")


def sample_stage(cascade: Cascade, captions: list[str], batch_size: int, **kwargs) -> torch.Tensor:
    """One cascade stage run over all captions in batches (batch b seeded with b)."""
    lowres = kwargs.pop("lowres", None)
    out = []
    for b, start in enumerate(range(0, len(captions), batch_size)):
        chunk = captions[start : start + batch_size]
        low = None if lowres is None else lowres[start : start + batch_size]
        images = cascade.sample(chunk, seed=b, lowres=low, **kwargs)
        out.append(next(reversed(images.values())))
    return torch.cat(out)


def base_key(cascade: Cascade, captions: list[str], batch_size: int, overrides: dict | None = None) -> str:
    """What the base samples depend on: the base stage's weights and sampling settings, the captions, the batching."""
    stage = cascade.stages[0]
    settings = {**stage.sampling, **(overrides or {}).get(cascade.names[0], {})}
    digest = hashlib.sha256(json.dumps([captions, batch_size, settings], default=str).encode())
    for name, tensor in sorted(stage.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_samples(cascade: Cascade, captions: list[str], batch_size: int, cache: Path | None,
                 overrides: dict | None = None) -> torch.Tensor:
    """The base stage's samples of the captions, read from the cache file when it was written for the same key."""
    key = base_key(cascade, captions, batch_size, overrides) if cache is not None else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu")
        if saved.get("key") == key:
            return saved["images"]
    images = sample_stage(cascade, captions, batch_size, stop_at=cascade.names[0], overrides=overrides)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, "images": images}, tmp)
        tmp.replace(cache)  # never a half-written cache
    return images


def truth_images(scene_seed: int, num_scenes: int, size: int, base_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out scenes (heldout_scenes' first num_scenes) rendered at the SR size, and their renders at the base
    size upsampled bicubically, in [-1, 1]."""
    def render(resolution: int) -> torch.Tensor:
        return render_scenes(scene_seed, 0, num_scenes, resolution).float() / 127.5 - 1.0  # (N, 3, R, R)
    low = F.interpolate(render(base_size), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    return render(size), low


def parse_settings(items: list[str], cascade: Cascade) -> dict[str, dict]:
    """--set STAGE.KEY=VALUE items as per-stage sampling overrides (values read as YAML: 1.5, ddpm, [0, 0.5])."""
    overrides: dict[str, dict] = {}
    for item in items:
        name, _, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not (key and eq) or name not in cascade.names:
            raise ValueError(f"--set {item!r}: write STAGE.KEY=VALUE with STAGE one of {cascade.names}")
        overrides.setdefault(name, {})[key] = yaml.safe_load(value)
    for name, settings in overrides.items():
        cascade.stages[cascade.names.index(name)].checked_sampling(dict(settings))  # a misspelled key fails here
    return overrides


def row(name: str, images: torch.Tensor, scenes: list, fid_eval) -> dict:
    metrics = {k.removeprefix("alignment/").removeprefix("fidelity/"): v
               for k, v in evaluate_images(images, scenes, fid_eval).items()}
    n = len(scenes)
    lo, hi = wilson_interval(round(metrics["overall"] * n), n)
    return {"method": name, "size": images.shape[-1], **metrics, "overall_lo": lo, "overall_hi": hi}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cascade", help="an exported cascade folder (base -> one SR stage)")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--aug-levels", type=float, nargs="*",
                        help="default: the SR stage's stored level; none given: base and bicubic only")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--base-samples", type=Path, help="cache file of the base samples, reused when still valid")
    parser.add_argument("--save-grid", type=Path, help="rows of: bicubic | cascade per aug_level")
    parser.add_argument("--set", nargs="*", default=[], metavar="STAGE.KEY=VALUE",
                        help="replace a stored sampling setting, e.g. base16.guidance_weight=1.5")
    parser.add_argument("--fid-resamples", type=int, default=200,
                        help="bootstrap resamples of each row's FID minus bicubic's (0: no interval)")
    parser.add_argument("--truth", action="store_true",
                        help="add rows for the scenes' renders at the SR size and bicubic of their base-size renders")
    args = parser.parse_args()
    cascade = Cascade.load(args.cascade)
    if len(cascade.stages) != 2:
        raise ValueError(f"{args.cascade} has stages {cascade.names}: this compares a base and one SR stage")
    base_name, sr_name = cascade.names
    overrides = parse_settings(args.set, cascade)
    scenes = heldout_scenes(args.num_scenes, args.scene_seed)
    captions = [s.caption for s in scenes]
    base = base_samples(cascade, captions, args.batch_size, args.base_samples, overrides)
    size = cascade.stages[1].output_size(base[:1])[-1]
    fid_cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/eval/fid.yaml"))
    fid_cfg.update(cache_dir="data/fid", kid_subset_size=min(fid_cfg["kid_subset_size"], len(scenes)))
    fid_cfg["reference"]["resolution"] = size
    fid64 = build_fid_evaluator(fid_cfg)
    rows = [row(f"{base_name} (base samples)", base, scenes, None)]
    upsampled = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    rows.append(row(f"bicubic({base_name})", upsampled, scenes, fid64))
    bicubic_features = fid64.features(upsampled)

    def versus_bicubic(r: dict, images: torch.Tensor) -> dict:
        """The row with its FID minus bicubic's and that difference's paired-bootstrap 95% interval."""
        if args.fid_resamples > 0:
            diff = paired_fid_difference(fid64.features(images), bicubic_features, fid64.reference_features(),
                                         args.fid_resamples)
            r.update(zip(("fid_minus_bicubic", "fid_minus_bicubic_lo", "fid_minus_bicubic_hi"), diff, strict=True))
        return r
    if args.truth:
        real, real_bicubic = truth_images(args.scene_seed, args.num_scenes, size, base.shape[-1])
        rows.append(versus_bicubic(row(f"truth (renders at {size})", real, scenes, fid64), real))
        rows.append(versus_bicubic(row(f"bicubic(renders at {base.shape[-1]})", real_bicubic, scenes, fid64),
                                   real_bicubic))
    grid = [upsampled[:8]]
    levels = [cascade.stages[1].sampling["aug_level"]] if args.aug_levels is None else args.aug_levels
    for level in levels:
        sr = sample_stage(cascade, captions, args.batch_size, start_at=sr_name, lowres=base,
                          overrides={sr_name: {**overrides.get(sr_name, {}), "aug_level": level}})
        rows.append(versus_bicubic(row(f"cascade {sr_name}, aug_level {level}", sr, scenes, fid64), sr))
        grid.append(sr[:8])
    print(f"{args.num_scenes} held-out scenes (world seed {args.scene_seed}); overall with Wilson 95% interval")
    headers = " ".join(f"{NAMES[c]:>8}" for c in CATEGORIES)
    print(f"{'method':<36} {'size':>4} {headers} {'interval':>14} {'FID':>7}  FID - bicubic's [95%]")
    for r in rows:
        fid = f"{r['domain_fid']:7.2f}" if "domain_fid" in r else f"{'-':>7}"
        diff = (f"  {r['fid_minus_bicubic']:+.2f} [{r['fid_minus_bicubic_lo']:+.2f}, {r['fid_minus_bicubic_hi']:+.2f}]"
                if "fid_minus_bicubic" in r else "")
        print(f"{r['method']:<36} {r['size']:>4} " + " ".join(f"{r.get(c, float('nan')):8.3f}" for c in CATEGORIES)
              + f" [{r['overall_lo']:.3f}, {r['overall_hi']:.3f}] {fid}{diff}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.save_grid:
        save_png(make_grid(torch.stack(grid, 1).flatten(0, 1), nrow=len(grid)), args.save_grid)


if __name__ == "__main__":
    main()
