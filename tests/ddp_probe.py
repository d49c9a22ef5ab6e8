"""A callback for the DDP test: what each rank read, its first loss, its gradients after all-reduce, its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


class DdpProbe(L.Callback):
    """Writes <out_dir>/rank<r>.pt at the end of training."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []
        self.first_loss: float | None = None
        self.first_grads: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.keys += list(batch["keys"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if self.first_loss is None:
            self.first_loss = float(outputs["loss"])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.first_grads is None:  # after DDP's all-reduce, before the first update
            self.first_grads = torch.cat([p.grad.flatten() for p in pl_module.unet.parameters()]).clone()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = torch.cat([p.detach().flatten() for p in pl_module.unet.parameters()])
        torch.save({"keys": self.keys, "first_loss": self.first_loss, "first_grads": self.first_grads,
                    "weights": weights, "world_size": trainer.world_size,
                    "encoder_loads": trainer.datamodule.text_encoder.loads},
                   self.out_dir / f"rank{trainer.global_rank}.pt")
