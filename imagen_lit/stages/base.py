"""The base text-to-image stage (Imagen Sec. 2.2-2.3): a thin LightningModule over the diffusion core."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import Tensor, nn

from imagen_lit.diffusion import GaussianDiffusion
from imagen_lit.models.ema import EMA

NOISE_BUCKETS = 4  # train/loss is also logged per quarter of t, the noise level

DEFAULT_SAMPLING = {
    "sampler": "dpmpp_2m",
    "steps": 30,
    "guidance_weight": 3.0,
    "thresholding": "dynamic",
    "percentile": 0.995,
    "eta": 0.0,
}


class BaseStage(L.LightningModule):
    """Trains a U-Net on (image, text) with classifier-free guidance dropout; samples with the EMA weights."""

    def __init__(
        self,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        ema_decay: float = 0.9999,
        cond_drop_prob: float = 0.1,
        channels_last: bool = False,
        sampling: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        self.unet = unet.to(memory_format=torch.channels_last) if channels_last else unet
        self.diffusion = diffusion
        self.ema = EMA(self.unet, decay=ema_decay)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.cond_drop_prob = cond_drop_prob
        self.channels_last = channels_last
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.skipped_samples = 0
        self.flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor

    def drop_text(self, text_embeds: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the caption by the null condition with probability cond_drop_prob (Imagen Sec. 2.2)."""
        keep = torch.rand(text_embeds.shape[0], device=text_embeds.device) >= self.cond_drop_prob  # (B,)
        return text_embeds * keep[:, None, None].to(text_embeds.dtype), text_mask & keep[:, None]

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.flops_per_batch is None:
            self.flops_per_batch = self.count_flops(batch)

    def count_flops(self, batch: dict[str, Any]) -> int:
        """Forward + backward FLOPs of one training batch, counted on a meta-device copy of the U-Net."""
        net = copy.deepcopy(self.unet).to("meta")
        x, embeds, mask = (torch.empty_like(batch[k], device="meta") for k in ("images", "text_embeds", "text_mask"))
        t = torch.empty(x.shape[0], device="meta")
        return int(measure_flops(net, lambda: net(x, t, embeds, mask), loss_fn=torch.Tensor.sum))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["images"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        text_embeds, text_mask = self.drop_text(batch["text_embeds"], batch["text_mask"])
        losses, t = self.diffusion.training_loss(self.unet, images, text_embeds=text_embeds, text_mask=text_mask)
        loss = losses.mean()
        self.skipped_samples += int(batch.get("n_skipped", 0))
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log_loss_by_noise_level(losses.detach(), t)
        self.log("data/skipped_samples", float(self.skipped_samples), batch_size=images.shape[0])
        return loss

    def log_loss_by_noise_level(self, losses: Tensor, t: Tensor) -> None:
        """Mean loss per bucket of t: where in the noise range the model is still learning."""
        bucket = (t * NOISE_BUCKETS).long().clamp(max=NOISE_BUCKETS - 1)  # (B,)
        for i in range(NOISE_BUCKETS):
            chosen = bucket == i
            if chosen.any():
                name = f"train/loss_t{i / NOISE_BUCKETS:.2f}-{(i + 1) / NOISE_BUCKETS:.2f}"
                self.log(name, losses[chosen].mean(), batch_size=int(chosen.sum()))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.unet.parameters() if p.grad is not None]
        if grads:  # the norm before clipping
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update(self.unet)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.unet.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_samples"] = self.skipped_samples

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))

    @torch.no_grad()
    def generate(
        self,
        text_embeds: Tensor,
        text_mask: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Sample images in [-1, 1] for text embeds [B, L, D] and mask [B, L] (Imagen Sec. 2.2-2.3)."""
        unknown = set(sampling) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}; valid: {sorted(DEFAULT_SAMPLING)}")
        settings = {**self.sampling, **sampling}
        net = self.ema.module if use_ema else self.unet
        size = net.image_size
        channels = getattr(net, "in_channels", 3)
        text_embeds = text_embeds.to(self.device)
        text_mask = text_mask.to(self.device)
        noise = torch.randn(
            (text_embeds.shape[0], channels, size, size), generator=generator, device=text_embeds.device
        )
        null_cond = {"text_embeds": torch.zeros_like(text_embeds), "text_mask": torch.zeros_like(text_mask)}
        return self.diffusion.sample(
            net,
            noise,
            cond={"text_embeds": text_embeds, "text_mask": text_mask},
            null_cond=null_cond,
            generator=generator,
            callback=callback,
            disable=not progress,
            **settings,
        )
