"""The Imagen cascade (Sec. 2, Fig. A.4): a base stage and super-resolution stages sampled one after the other.

A cascade is built from one train.py checkpoint per stage, or loaded from an exported folder:

    <folder>/cascade.json            stage names in order, the text encoder they expect, the format version
    <folder>/<name>/config.yaml      the stage's config (unet, diffusion, stage, text_encoder)
    <folder>/<name>/model.safetensors  its weights (network and EMA)

    python -m imagen_lit.cascade export <folder> <base.ckpt> <sr.ckpt> [<sr.ckpt> ...]

Stages are named by what they make: base32, sr64, sr128, ... Each stage samples with its own stored settings;
`sample` takes per-stage overrides.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from imagen_lit.fileio import atomic_write
from imagen_lit.stages.base import BaseStage
from imagen_lit.text import FrozenTextEncoder

CASCADE_FILE = "cascade.json"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
STAGE_CONFIG_KEYS = ("unet", "diffusion", "stage", "text_encoder")
# Keys of a text_encoder config that do not change the embeddings a stage was trained on.
ENCODER_RUNTIME_KEYS = ("dtype", "device", "batch_size")


def encoder_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The parts of a text_encoder config that fix its embeddings (model, depth, init, max length)."""
    enc = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in sorted(enc.items()) if k not in ENCODER_RUNTIME_KEYS}  # type: ignore[union-attr]


def is_super_resolution(stage: BaseStage) -> bool:
    """Whether the stage takes a low-res image (an SRStage)."""
    return hasattr(stage, "lowres_size")


def stage_name(stage: BaseStage) -> str:
    """base<size> or sr<size>, by the image side the stage makes (e.g. base32, sr64, sr128)."""
    return f"{'sr' if is_super_resolution(stage) else 'base'}{stage.image_size}"


@dataclass
class Cascade:
    """Stages in sampling order, their configs and the one text encoder they share (Imagen Sec. 2.1, 2.4)."""

    stages: list[BaseStage]
    configs: list[DictConfig]
    text_encoder: FrozenTextEncoder
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a cascade needs at least one stage")
        if len(self.configs) != len(self.stages):
            raise ValueError(f"{len(self.stages)} stages but {len(self.configs)} configs")
        self.names = self.names or [stage_name(s) for s in self.stages]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"stage names must be unique, got {self.names}")
        check_same_encoder(self.configs, self.names)
        check_chain(self.stages, self.names)

    # ---- building -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path]) -> Cascade:
        """Load one train.py checkpoint per stage, base first (Imagen Fig. A.4); the text encoder is built once."""
        from imagen_lit.build import read_stage_checkpoint, stage_from_checkpoint

        if not paths:
            raise ValueError("no stage checkpoints given: pass the base stage's first, then each SR stage's")
        stages, configs, text_encoder = [], [], None
        for path in paths:  # one checkpoint in memory at a time
            checkpoint, cfg = read_stage_checkpoint(path)
            configs.append(stage_config(cfg))
            check_same_encoder(configs, [str(p) for p in paths[: len(configs)]])  # before building on a wrong width
            text_encoder = text_encoder or instantiate(cfg.text_encoder)
            stages.append(stage_from_checkpoint(checkpoint, cfg, text_encoder.dim))
            del checkpoint
        return cls(stages, configs, text_encoder)

    @classmethod
    def load(cls, folder: str | Path) -> Cascade:
        """Load an exported cascade folder (see `save`); no Hydra run directory is needed."""
        from safetensors.torch import load_file

        from imagen_lit.build import build_stage

        folder = Path(folder)
        index_path = folder / CASCADE_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{folder} is not a cascade folder: {CASCADE_FILE} not found "
                                    f"(write one with `python -m imagen_lit.cascade export`)")
        index = json.loads(index_path.read_text())
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{index_path}: format_version {index.get('format_version')} is not supported "
                             f"(this version reads {FORMAT_VERSION})")
        names = list(index["stages"])
        missing = [n for n in names if not all((folder / n / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE))]
        if missing:
            raise FileNotFoundError(f"cascade {folder} lists stages {names} but {missing} lack "
                                    f"{CONFIG_FILE} or {WEIGHTS_FILE}: the folder is incomplete")
        configs = [OmegaConf.load(folder / n / CONFIG_FILE) for n in names]
        for name, cfg in zip(names, configs, strict=True):
            if encoder_identity(cfg.text_encoder) != index["text_encoder"]:
                raise ValueError(f"cascade {folder}: stage {name} was trained with text encoder "
                                 f"{encoder_identity(cfg.text_encoder)}, the cascade expects {index['text_encoder']}")
        text_encoder = instantiate(configs[0].text_encoder)
        stages = []
        for name, cfg in zip(names, configs, strict=True):
            stage = build_stage(cfg, text_encoder.dim)
            stage.load_state_dict(load_file(str(folder / name / WEIGHTS_FILE)))
            stages.append(stage.eval())
        return cls(stages, configs, text_encoder, names)

    def save(self, folder: str | Path) -> Path:
        """Write cascade.json and, per stage, config.yaml and model.safetensors (Imagen Fig. A.4's chain)."""
        from safetensors.torch import save

        folder = Path(folder)
        for name, stage, cfg in zip(self.names, self.stages, self.configs, strict=True):
            (folder / name).mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in stage.state_dict().items()}
            atomic_write(folder / name / WEIGHTS_FILE, lambda f, s=state: f.write(save(s)))
            atomic_write(folder / name / CONFIG_FILE, lambda f, c=cfg: f.write(OmegaConf.to_yaml(c).encode()))
        index = {"format_version": FORMAT_VERSION, "stages": self.names,
                 "text_encoder": encoder_identity(self.configs[0].text_encoder),
                 "image_sizes": [s.image_size for s in self.stages]}
        atomic_write(folder / CASCADE_FILE, lambda f: f.write(json.dumps(index, indent=2).encode()))
        return folder

    # ---- sampling -------------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> Cascade:
        for stage in self.stages:
            stage.to(device)
        return self

    def index_of(self, name: str | int | None, default: int) -> int:
        """Position of a stage given by name or index (None: default)."""
        if name is None:
            return default
        if isinstance(name, int) or str(name).lstrip("-").isdigit():
            i = int(name)
            if not -len(self.stages) <= i < len(self.stages):
                raise ValueError(f"stage index {i} out of range for the cascade {self.names}")
            return i % len(self.stages)
        if name not in self.names:
            raise ValueError(f"no stage named {name!r}; this cascade has {self.names}")
        return self.names.index(name)

    def steps_per_batch(self, start: int, stop: int, overrides: dict[str, dict[str, Any]]) -> int:
        """Network-evaluation steps one batch takes from stage start to stop (for a progress bar)."""
        return sum(int({**self.stages[i].sampling, **overrides.get(self.names[i], {})}["steps"])
                   for i in range(start, stop + 1))

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        start_at: str | int | None = None,
        stop_at: str | int | None = None,
        lowres: Tensor | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        use_ema: bool = True,
        callback: Callable[[dict[str, Any]], None] | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> dict[str, Tensor]:
        """Images in [-1, 1] of every stage run, by stage name: base -> SR -> SR (Imagen Fig. A.4).

        start_at an SR stage super-resolves `lowres` [B, 3, h, w] (the user's own images, one per prompt) instead
        of sampling the stages before it. overrides[name] replaces that stage's sampling settings. Each stage draws
        its noise from its own generator seeded by (seed, stage index), so a stage's output depends only on its
        inputs and the seed. callback is called after every sampling step, on_stage(name) before each stage.
        """
        overrides = overrides or {}
        unknown = set(overrides) - set(self.names)
        if unknown:
            raise ValueError(f"overrides for unknown stages {sorted(unknown)}; this cascade has {self.names}")
        start, stop = self.index_of(start_at, 0), self.index_of(stop_at, len(self.stages) - 1)
        if stop < start:
            raise ValueError(f"stop_at {self.names[stop]} comes before start_at {self.names[start]}")
        first = self.stages[start]
        if is_super_resolution(first):
            if lowres is None:
                raise ValueError(f"start_at={self.names[start]} is a super-resolution stage: give the low-res "
                                 f"images to super-resolve (lowres_image=...)")
            if lowres.shape[0] != len(prompts):
                raise ValueError(f"{lowres.shape[0]} low-res images for {len(prompts)} prompts")
            first.output_size(lowres)  # wrong size or channel count: a clear ValueError before any work
        elif lowres is not None:
            sr_names = [n for n, s in zip(self.names, self.stages, strict=True) if is_super_resolution(s)]
            raise ValueError(f"start_at={self.names[start]} is the base stage, which takes no low-res image; "
                             f"start at an SR stage ({sr_names})")
        embeds, mask = self.text_encoder.encode(list(prompts))
        outputs: dict[str, Tensor] = {}
        images = lowres
        for i in range(start, stop + 1):
            stage, name = self.stages[i], self.names[i]
            if on_stage is not None:
                on_stage(name)
            settings = dict(overrides.get(name, {}))
            generator = torch.Generator(device=stage.device).manual_seed(seed * 1_000_003 + i)
            kwargs: dict[str, Any] = {"generator": generator, "use_ema": use_ema, "callback": callback, **settings}
            if is_super_resolution(stage):
                images = stage.generate(embeds, mask, images, **kwargs)
            else:
                images = stage.generate(embeds, mask, **kwargs)
            images = images.float().cpu().clamp(-1, 1)  # thresholding leaves float error of ~1e-4 past the range
            outputs[name] = images
        return outputs


def stage_config(cfg: DictConfig) -> DictConfig:
    """The parts of a train.py config that rebuild a stage: unet, diffusion, stage and text_encoder, resolved."""
    missing = [k for k in STAGE_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"stage config lacks {missing}: was it written by train.py?")
    return OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in STAGE_CONFIG_KEYS})


def check_same_encoder(configs: Sequence[DictConfig], names: Sequence[str]) -> None:
    """ValueError unless every stage was trained on the same text encoder's embeddings (Imagen Sec. 2.1)."""
    identities = [encoder_identity(c.text_encoder) for c in configs]
    for name, ident in zip(names[1:], identities[1:], strict=True):
        if ident != identities[0]:
            differ = sorted(k for k in set(ident) | set(identities[0]) if ident.get(k) != identities[0].get(k))
            raise ValueError(
                f"stages trained with different text encoders: {names[0]} used {identities[0]}, {name} used {ident} "
                f"(they differ in {differ}); every stage of a cascade must read the same embeddings")


def check_chain(stages: Sequence[BaseStage], names: Sequence[str]) -> None:
    """ValueError unless each SR stage's low-res input is the previous stage's output size.

    A crop-trained (fully convolutional) stage takes any size: it makes `scale` times the previous output.
    """
    for i in range(1, len(stages)):
        prev, stage = stages[i - 1], stages[i]
        if not is_super_resolution(stage):
            raise ValueError(f"stage {names[i]} follows {names[i - 1]} but is not a super-resolution stage: "
                             f"only the first stage of a cascade can be a base stage")
        if not stage.fully_convolutional and stage.lowres_size != prev.image_size:
            raise ValueError(f"stage {names[i]} upsamples {stage.lowres_size}x{stage.lowres_size} images but "
                             f"{names[i - 1]} makes {prev.image_size}x{prev.image_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a cascade folder from train.py checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write <folder> from one checkpoint per stage, base first")
    export.add_argument("folder")
    export.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    cascade = Cascade.from_checkpoints(args.checkpoints)
    folder = cascade.save(args.folder)
    print(f"wrote cascade {cascade.names} to {folder}")


if __name__ == "__main__":
    main()
