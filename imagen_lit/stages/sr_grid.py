"""Sample grids for super-resolution stages: the low-res input, the sample and the ground truth side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from imagen_lit.images import make_grid, save_png
from imagen_lit.stages.callbacks import GRID_PAD, PeriodicSamples, log_image

KEPT = ("images", "lowres", "text_embeds", "text_mask")


class SRSampleGrid(PeriodicSamples):
    """Every N steps and at the end of training, super-resolve the first training batch's low-res images (kept
    fixed) and write rows of (bicubic upsample | sample | ground truth) to samples/ and TensorBoard (Sec. 2.4)."""

    def __init__(
        self,
        num_images: int = 8,
        every_n_steps: int = 1000,
        seed: int = 0,
        out_dir: str | None = None,
        sampling: dict[str, Any] | None = None,
    ):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        super().__init__(every_n_steps)
        self.num_images, self.seed = num_images, seed
        self.out_dir = out_dir
        self.sampling = dict(sampling or {})
        self._batch: dict[str, torch.Tensor] | None = None
        self._captions: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        if self._batch is None:
            if batch.get("lowres") is None:
                raise ValueError("SRSampleGrid needs batches with 'lowres': set data.lowres_resolution")
            self._batch = {k: batch[k][: self.num_images].detach().cpu().clone() for k in KEPT}
            self._captions = list(batch.get("captions", [])[: self.num_images])

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str | None = None) -> None:
        """Sample with a fixed seed on every rank (ZeRO-3 gathers shards in each forward); rank 0 writes."""
        step = trainer.global_step
        if self._batch is None or not self.due(step, name):
            return
        b = self._batch
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        samples = pl_module.generate(b["text_embeds"], b["text_mask"], b["lowres"], generator=generator,
                                     **self.sampling).float().cpu()
        if not trainer.is_global_zero:
            return
        upsampled = F.interpolate(b["lowres"].float(), size=samples.shape[-2:], mode="bicubic").clamp(-1, 1)
        rows = torch.stack([upsampled, samples, b["images"].float()], dim=1)  # (B, 3, C, H, W)
        grid = make_grid(rows.flatten(0, 1), nrow=3, pad=GRID_PAD)  # one row per image
        out_dir = Path(self.out_dir or Path(trainer.default_root_dir) / "samples")
        save_png(grid, out_dir / f"{name or f'step_{step:07d}'}.png")
        meta = {"columns": ["bicubic", "sample", "ground truth"], "captions": self._captions,
                "grid": {"nrow": 3, "pad": GRID_PAD, "image_size": samples.shape[-1], "seed": self.seed},
                "sampling": {**pl_module.sampling, **self.sampling}}
        (out_dir / "captions.json").write_text(json.dumps(meta, indent=2))
        log_image(trainer, "samples", grid, step)
