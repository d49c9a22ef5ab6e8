"""Sample images from a trained stage checkpoint: one PNG per image, a grid, and a JSON of the settings.

    python sample.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
    python sample.py ckpt_path=... prompts='[a red circle, two blue squares]' num_images=4 \
        sampler=ddim steps=50 guidance_weight=5 thresholding=dynamic seed=1
    python sample.py ckpt_path=... drawbench=all num_images=4     # DrawBench: drawbench/<category>.png each
    python sample.py -m ckpt_path=... evaluate=true thresholding=none,static,dynamic \
        guidance_weight=1,1.25,1.5,1.75,2,3,4,5,6,7,8,9,10          # guidance sweep: summary.csv, pareto.png

The cascade (Imagen Fig. A.4): base -> SR -> SR, from an exported folder or one checkpoint per stage:
    python sample.py cascade=outputs/quickstart/cascade
    python sample.py 'stages=[<base>.ckpt,<sr64>.ckpt]' stage_sampling.sr64.aug_level=0.1 stop_at=sr64
    python sample.py cascade=... start_at=sr64 lowres_image=my_32px.png prompts='[a red circle]'
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from imagen_lit.build import load_base, read_stage_checkpoint
from imagen_lit.diffusion import check_sampling_options
from imagen_lit.eval.drawbench import drawbench_prompts
from imagen_lit.images import make_grid, read_png, save_png
from imagen_lit.stages.base import DEFAULT_SAMPLING
from imagen_lit.sweep import METRICS_FILE, register_resolvers, run_task

log = logging.getLogger(__name__)


def read_prompts(cfg: DictConfig) -> list[tuple[str, str | None]]:
    """(prompt, DrawBench category or None) from cfg.drawbench, or cfg.prompts and/or cfg.prompts_file."""
    if cfg.get("drawbench"):
        return drawbench_prompts(None if cfg.drawbench == "all" else str(cfg.drawbench))
    prompts = [str(p) for p in (cfg.get("prompts") or [])]
    if cfg.get("prompts_file"):
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts given: pass prompts='[a red circle, ...]', prompts_file=path.txt or drawbench=all")
    return [(p, None) for p in prompts]


def resolve_device(name: str) -> torch.device:
    """'auto' is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sampling_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The sampling keys set on the command line, as plain values (a list such as guidance_interval included)."""
    return {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
            for k in DEFAULT_SAMPLING if (v := cfg.get(k)) is not None}


def high_noise_expert(cfg: DictConfig) -> str | None:
    """experts.high_noise: the checkpoint sampling the noisy levels (eDiff-I), or None for one base stage."""
    return (cfg.get("experts") or {}).get("high_noise")


def load_sampled_base(cfg: DictConfig) -> tuple[Any, Any, DictConfig]:
    """The base stage of ckpt_path, or with experts.high_noise the pair of noise-level experts (eDiff-I)."""
    experts = cfg.get("experts") or {}
    own = experts.get("high_noise_sampling") or {}
    return load_base(cfg.ckpt_path, high_noise_expert(cfg), float(experts.get("switch_log_snr", 0.0)),
                     OmegaConf.to_container(own) if OmegaConf.is_config(own) else dict(own))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Sample held-out synthetic scenes at the configured guidance and score alignment and domain FID."""
    from torch.utils.tensorboard import SummaryWriter

    from imagen_lit.eval.fid import build_fid_evaluator
    from imagen_lit.eval.guidance import evaluate_images, generate_for_scenes, heldout_scenes

    overrides = sampling_overrides(cfg)
    check_sampling_options(**overrides)
    scenes = heldout_scenes(cfg.eval.num_images, cfg.eval.scene_seed)
    stage, text_encoder, _ = load_sampled_base(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    stage.to(device)
    settings = {**stage.sampling, **overrides}
    fid_cfg: dict[str, Any] = OmegaConf.to_container(cfg.eval.fid, resolve=True)  # type: ignore[assignment]
    fid_cfg["reference"]["resolution"] = stage.image_size  # real renders at the samples' size
    fid_cfg["kid_subset_size"] = min(fid_cfg["kid_subset_size"], len(scenes))
    fid = build_fid_evaluator(fid_cfg, device=device) if cfg.eval.fid.feature else None
    bar = tqdm(total=-(-len(scenes) // cfg.batch_size) * settings["steps"], desc="evaluating", unit="step",
               disable=not cfg.progress)
    images = generate_for_scenes(stage, text_encoder.encode, scenes, seed=cfg.seed, batch_size=cfg.batch_size,
                                 use_ema=cfg.use_ema, callback=lambda _: bar.update(1), **overrides)
    bar.close()
    metrics: dict[str, Any] = evaluate_images(images, scenes, fid)
    if cfg.eval.get("clip_weights"):  # Imagen's alignment axis, for users with local CLIP weights
        from imagen_lit.eval.clip_score import ClipScore

        metrics["alignment/clip_score"] = ClipScore(cfg.eval.clip_weights, device=device)(
            images, [s.caption for s in scenes])
    out_dir = Path(cfg.output_dir)
    grid = make_grid(images[:64], nrow=8)
    save_png(grid, out_dir / "grid.png")
    hparams = {"guidance_weight": float(settings["guidance_weight"]), "thresholding": settings["thresholding"],
               "sampler": settings["sampler"], "steps": int(settings["steps"])}
    if high_noise_expert(cfg):
        hparams.update(high_noise_expert=str(cfg.experts.high_noise), switch_log_snr=float(cfg.experts.switch_log_snr))
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:  # HPARAMS tab: the sweep's jobs side by side
        writer.add_hparams(hparams, {k: v for k, v in metrics.items() if isinstance(v, float)}, run_name=".")
        writer.add_image("samples", (grid + 1) / 2)
    result = {**metrics, **hparams, "num_images": len(scenes)}
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=2))
    log.info("alignment %.3f, %s", metrics["alignment/overall"],
             ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("fidelity/")))
    return result


def save_images(images: torch.Tensor, jobs: list[tuple[str, int]], out_dir: Path, folder: Path, nrow: int
                ) -> list[dict[str, Any]]:
    """<folder>/images/<n>.png per image and <folder>/grid.png; records (file relative to out_dir, prompt, index)."""
    records = []
    for idx, ((prompt, i), image) in enumerate(zip(jobs, images, strict=True)):
        path = save_png(image, folder / "images" / f"{idx:05d}.png")
        records.append({"file": str(path.relative_to(out_dir)), "prompt": prompt, "index": i})
    save_png(make_grid(images, nrow=nrow), folder / "grid.png")
    return records


def read_lowres_images(paths: str | list[str], count: int) -> torch.Tensor:
    """[count, 3, h, w] in [-1, 1] from one PNG (used for every image) or one PNG per image."""
    files = [paths] if isinstance(paths, str) else [str(p) for p in paths]
    if len(files) not in (1, count):
        raise ValueError(f"lowres_image: give one image or one per sampled image ({count}), got {len(files)}")
    images = []
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"lowres_image not found: {f}")
        images.append(read_png(f))  # (3, h, w)
    if len({tuple(i.shape) for i in images}) > 1:
        raise ValueError(f"lowres_image files differ in size: {[tuple(i.shape[-2:]) for i in images]}")
    stacked = torch.stack(images)  # (n, 3, h, w)
    return stacked.expand(count, -1, -1, -1) if len(files) == 1 else stacked


def load_cascade(cfg: DictConfig) -> Any:
    """The Cascade of cfg.cascade (an exported folder) or cfg.stages (one checkpoint per stage)."""
    from imagen_lit.cascade import Cascade

    if cfg.get("cascade") and cfg.get("stages"):
        raise ValueError("give either cascade=<folder> or stages=[<ckpt>, ...], not both")
    return Cascade.load(cfg.cascade) if cfg.get("cascade") else Cascade.from_checkpoints(list(cfg.stages))


def sample_cascade(cfg: DictConfig) -> Path:
    """Run the cascade for cfg.num_images per prompt; every stage's images go to <output_dir>/<stage>/."""
    prompts = read_prompts(cfg)
    if cfg.num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {cfg.num_images}")
    common = sampling_overrides(cfg)  # global keys: every stage
    stage_sampling = cfg.get("stage_sampling")
    requested: dict[str, Any] = (  # type: ignore[assignment]
        OmegaConf.to_container(stage_sampling, resolve=True) if stage_sampling is not None else {})
    cascade = load_cascade(cfg)
    unknown = {n for n, opts in requested.items() if opts} - set(cascade.names)
    if unknown:
        raise ValueError(f"stage_sampling for unknown stages {sorted(unknown)}; this cascade has {cascade.names}")
    per_stage = {n: {**common, **{k: v for k, v in (requested.get(n) or {}).items() if v is not None}}
                 for n in cascade.names}
    for stage, name in zip(cascade.stages, cascade.names, strict=True):
        stage.checked_sampling(dict(per_stage[name]))  # a misspelled key fails before any sampling
    device = resolve_device(cfg.get("device", "auto"))
    cascade.to(device)
    jobs = [(p, i) for p, _ in prompts for i in range(cfg.num_images)]
    lowres = read_lowres_images(cfg.lowres_image, len(jobs)) if cfg.get("lowres_image") else None
    start = cascade.index_of(cfg.get("start_at"), 0)
    stop = cascade.index_of(cfg.get("stop_at"), len(cascade.stages) - 1)
    num_batches = -(-len(jobs) // cfg.batch_size)
    bar = tqdm(total=num_batches * cascade.steps_per_batch(start, stop, per_stage), desc="cascade", unit="step",
               disable=not cfg.progress)
    outputs: dict[str, list[torch.Tensor]] = {}
    for first in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[first : first + cfg.batch_size]
        batch = cascade.sample(
            [p for p, _ in chunk], seed=cfg.seed + first, start_at=start, stop_at=stop,
            lowres=None if lowres is None else lowres[first : first + len(chunk)], overrides=per_stage,
            use_ema=cfg.use_ema, callback=lambda _: bar.update(1), on_stage=lambda n: bar.set_description(n),
        )
        for name, images in batch.items():
            outputs.setdefault(name, []).append(images)
    bar.close()
    out_dir = Path(cfg.output_dir)
    records = {name: save_images(torch.cat(chunks), jobs, out_dir, out_dir / name, cfg.num_images)
               for name, chunks in outputs.items()}
    last = list(outputs)[-1]
    save_png(make_grid(torch.cat(outputs[last]), nrow=cfg.num_images), out_dir / "grid.png")
    meta: dict[str, Any] = {
        "cascade": str(cfg.cascade) if cfg.get("cascade") else [str(p) for p in cfg.stages],
        "stages": list(outputs), "seed": cfg.seed, "use_ema": cfg.use_ema, "num_images": cfg.num_images,
        "lowres_image": cfg.get("lowres_image"),
        "sampling": {n: {**cascade.stages[cascade.names.index(n)].sampling, **per_stage[n]} for n in outputs},
        "images": records,
    }
    (out_dir / "samples.json").write_text(json.dumps(meta, indent=2, default=str))
    log.info("cascade %s: wrote %d images per stage to %s", " -> ".join(outputs), len(jobs), out_dir)
    return out_dir


def sample_sr_checkpoint(cfg: DictConfig) -> Path:
    """ckpt_path of a super-resolution stage: it super-resolves lowres_image, as a one-stage cascade."""
    if high_noise_expert(cfg):
        raise ValueError(f"{cfg.ckpt_path} is a super-resolution stage; experts.high_noise pairs two base stages: "
                         f"pass the low-noise base checkpoint as ckpt_path")
    if cfg.get("evaluate") or not cfg.get("lowres_image"):
        raise ValueError(f"{cfg.ckpt_path} is a super-resolution stage: pass lowres_image=<png> to super-resolve an "
                         f"image, or stages=[<base>.ckpt,{cfg.ckpt_path}] to sample (or evaluate) the cascade")
    cfg = cfg.copy()
    cfg.stages, cfg.ckpt_path = [cfg.ckpt_path], None
    return sample_cascade(cfg)


def sample(cfg: DictConfig) -> Path | dict[str, Any]:
    """Generate cfg.num_images per prompt and return the output folder; with evaluate=true, evaluate instead."""
    if high_noise_expert(cfg) and (cfg.get("cascade") or cfg.get("stages")):
        raise ValueError("experts.high_noise pairs with one base checkpoint (ckpt_path=<low-noise expert>), not a "
                         "cascade: sample the pair alone, or drop experts.high_noise")
    if cfg.get("cascade") or cfg.get("stages"):
        return sample_cascade(cfg)
    if cfg.get("ckpt_path") is None:
        raise ValueError("nothing to sample: pass ckpt_path=<checkpoint>, cascade=<folder> or stages=[<ckpt>, ...]")
    overrides = sampling_overrides(cfg)
    check_sampling_options(**overrides)  # fail before loading anything
    if not cfg.get("evaluate"):
        prompts = read_prompts(cfg)
        if cfg.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {cfg.num_images}")
    if read_stage_checkpoint(cfg.ckpt_path)[1].unet.get("lowres_cond"):
        return sample_sr_checkpoint(cfg)
    if cfg.get("evaluate"):
        return evaluate(cfg)
    stage, text_encoder, _ = load_sampled_base(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    stage.to(device)
    settings = {**stage.sampling, **overrides}
    out_dir = Path(cfg.output_dir)
    jobs = [(p, i) for p, _ in prompts for i in range(cfg.num_images)]
    images: list[torch.Tensor] = []
    num_batches = -(-len(jobs) // cfg.batch_size)
    bar = tqdm(total=num_batches * settings["steps"], desc="sampling", unit="step", disable=not cfg.progress)
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        embeds, mask = text_encoder.encode([p for p, _ in chunk])
        # One generator per batch, seeded from (seed, batch index): results do not depend on earlier batches.
        generator = torch.Generator(device=device).manual_seed(cfg.seed + start)
        batch = stage.generate(
            embeds, mask, generator=generator, use_ema=cfg.use_ema,
            callback=lambda _: bar.update(1), **overrides,
        )
        images.append(batch.float().cpu())
    bar.close()
    images_t = torch.cat(images)
    categories = [c for _, c in prompts for _ in range(cfg.num_images)]
    records = save_images(images_t, jobs, out_dir, out_dir, cfg.num_images)
    for record, category in zip(records, categories, strict=True):
        record["category"] = category
    for category in dict.fromkeys(c for c in categories if c is not None):  # DrawBench: one grid per category
        chosen = torch.tensor([c == category for c in categories])
        name = re.sub(r"[^A-Za-z0-9]+", "_", category).strip("_")
        save_png(make_grid(images_t[chosen], nrow=cfg.num_images), out_dir / "drawbench" / f"{name}.png")
    meta: dict[str, Any] = {
        "ckpt_path": str(cfg.ckpt_path), "seed": cfg.seed, "use_ema": cfg.use_ema,
        "num_images": cfg.num_images, "sampling": settings, "images": records,
    }
    (out_dir / "samples.json").write_text(json.dumps(meta, indent=2))
    log.info("wrote %d images, grid.png and samples.json to %s", len(records), out_dir)
    return out_dir


register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    log.debug(OmegaConf.to_yaml(cfg))
    run_task(sample, cfg)


if __name__ == "__main__":
    main()
