"""Training callbacks: sample grids for fixed prompts, the run config inside checkpoints, batch sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from imagen_lit.images import make_grid, save_png

CHECKPOINT_CONFIG_KEY = "imagen_lit_config"
GRID_PAD = 2


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of images in a batch (for Lightning's ThroughputMonitor)."""
    return int(batch["images"].shape[0])


def log_image(trainer: L.Trainer, tag: str, grid: torch.Tensor, step: int) -> None:
    """Log a [3, H, W] image in [-1, 1] to every logger that takes images (TensorBoard)."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, (grid + 1) / 2, global_step=step)


class PeriodicSamples(L.Callback):
    """Calls log_samples every `every_n_steps` optimizer steps and once more, as 'final', when training ends."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_samples(trainer, pl_module, name="final")

    def due(self, step: int, name: str | None) -> bool:
        """Whether to sample now: once per step (a resumed step is not sampled twice), always for 'final'."""
        if name is None and step == self._last_step:
            return False
        self._last_step = step
        return True

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str | None = None) -> None:
        raise NotImplementedError


class SampleGrid(PeriodicSamples):
    """Every N steps and at the end of training, sample fixed prompts and log the grid to TensorBoard and disk."""

    def __init__(
        self,
        prompts: list[str],
        every_n_steps: int = 1000,
        num_per_prompt: int = 1,
        seed: int = 0,
        out_dir: str | None = None,
        sampling: dict[str, Any] | None = None,
    ):
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        super().__init__(every_n_steps)
        self.prompts = [p for p in prompts for _ in range(num_per_prompt)]
        self.num_per_prompt = num_per_prompt
        self.seed = seed
        self.out_dir = out_dir
        self.sampling = dict(sampling or {})
        self._cond: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The fixed prompts are encoded once, with the encoder the data was cached with, by rank 0 alone (the others
        # never load the network), and sent to every rank: all of them sample. Nothing in fit encodes again, so
        # the network is freed (T5-XXL: 9.5 GB of rank 0's GPU).
        encoder = trainer.datamodule.text_encoder
        cond = encoder.encode(self.prompts) if trainer.is_global_zero else None
        self._cond = trainer.strategy.broadcast(cond, src=0)
        if trainer.is_global_zero:
            encoder.release()

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str | None = None) -> None:
        """Sample the prompts with a fixed seed; write samples/<step or name>.png and log to TensorBoard."""
        step = trainer.global_step
        if self._cond is None or not self.due(step, name):
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        # Every rank samples: under ZeRO-3 each forward gathers shards from all ranks. Rank 0 writes.
        images = pl_module.generate(*self._cond, generator=generator, **self.sampling)
        if trainer.is_global_zero:
            self._write(trainer, pl_module, images, step, name)

    def _write(
        self, trainer: L.Trainer, pl_module: L.LightningModule, images: torch.Tensor, step: int, name: str | None
    ) -> None:
        nrow = self.num_per_prompt if self.num_per_prompt > 1 else math.ceil(math.sqrt(len(images)))
        grid = make_grid(images.float().cpu(), nrow=nrow, pad=GRID_PAD)
        out_dir = Path(self.out_dir or Path(trainer.default_root_dir) / "samples")
        save_png(grid, out_dir / f"{name or f'step_{step:07d}'}.png")
        layout = {"nrow": nrow, "pad": GRID_PAD, "image_size": images.shape[-1], "seed": self.seed}
        settings = {**pl_module.sampling, **self.sampling}
        (out_dir / "prompts.json").write_text(json.dumps({"prompts": self.prompts, "grid": layout,
                                                         "sampling": settings}, indent=2))
        log_image(trainer, "samples", grid, step)


class GpuMemory(L.Callback):
    """Log peak GPU memory (allocated and reserved, GiB) since the start of training; a no-op on CPU."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.device.type != "cuda" or trainer.global_step % self.every_n_steps:
            return
        gib = 2.0**30
        pl_module.log("gpu/peak_allocated_gib", torch.cuda.max_memory_allocated(pl_module.device) / gib)
        pl_module.log("gpu/peak_reserved_gib", torch.cuda.max_memory_reserved(pl_module.device) / gib)


class SaveRunConfig(L.Callback):
    """Store the resolved run config in every checkpoint so sample.py can rebuild the stage from it alone."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.config


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves the final step when training stops between two periodic saves (max_time,
    an early stop, or a step budget that is not a multiple of every_n_train_steps), so last.ckpt is the trained model
    and not the one up to a few hundred steps before it."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
