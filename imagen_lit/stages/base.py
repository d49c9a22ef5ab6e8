"""The base text-to-image stage (Imagen Sec. 2.2-2.3): a thin LightningModule over the diffusion core."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from imagen_lit.diffusion import GaussianDiffusion
from imagen_lit.models.ema import EMA
from imagen_lit.models.text_cache import text_cache
from imagen_lit.stages.averaging import StageAverage
from imagen_lit.stages.console import expect_eval_modules
from imagen_lit.stages.flops import count_flops
from imagen_lit.stages.optim import attach_budget_clock, cpu_adam, offloads_optimizer, refuse_partitioned
from imagen_lit.stages.rng import RankRng

NOISE_BUCKETS = 4  # train/loss is also logged per quarter of t, the noise level
NOISE_BUCKET_NAMES = tuple(f"train/loss_t{i / NOISE_BUCKETS:.2f}-{(i + 1) / NOISE_BUCKETS:.2f}"
                           for i in range(NOISE_BUCKETS))
FP32_INPUTS = ("aug_level",)  # noise levels, kept fp32 like t whatever the weights' dtype


def loss_by_noise_level(losses: Tensor, t: Tensor) -> Tensor:
    """(NOISE_BUCKETS,) mean of losses [B] per quarter of t [B], NaN where a bucket is empty; no host sync."""
    bucket = (t * NOISE_BUCKETS).long().clamp(0, NOISE_BUCKETS - 1)  # (B,)
    sums = torch.zeros(NOISE_BUCKETS, device=losses.device).index_add_(0, bucket, losses.float())
    counts = torch.bincount(bucket, minlength=NOISE_BUCKETS).to(sums.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


DEFAULT_SAMPLING = {
    "sampler": "dpmpp_2m",
    "steps": 30,
    "guidance_weight": 3.0,
    "thresholding": "dynamic",
    "percentile": 0.995,
    "eta": 0.0,
    "guidance_interval": None,  # [t_lo, t_hi]: guide only at these noise levels (Kynkaanniemi et al. 2024)
}


class BaseStage(L.LightningModule):
    """Trains a U-Net on (image, text) with classifier-free guidance dropout; samples with the EMA weights.

    `unet` is a built module or a factory (Hydra `_partial_: true`). A factory is called in `configure_model`, inside
    the strategy's init context: under DeepSpeed ZeRO-3 the weights are partitioned as they are created, so no
    rank ever holds the whole unsharded U-Net.
    """

    default_sampling: dict[str, Any] = DEFAULT_SAMPLING

    def __init__(
        self,
        unet: nn.Module | Callable[[], nn.Module],
        diffusion: GaussianDiffusion,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        ema_decay: float = 0.9999,
        cond_drop_prob: float = 0.1,
        channels_last: bool = False,
        sampling: dict[str, Any] | None = None,
        compile: bool = False,
    ):
        super().__init__()
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        self.unet_factory = None if isinstance(unet, nn.Module) else unet
        self.unet: nn.Module | None = None
        self.ema: EMA | None = None  # a submodule: moved, saved and loaded with the stage
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.cond_drop_prob = cond_drop_prob
        self.channels_last = channels_last
        self.compile_unet = compile
        self.sampling = {**self.default_sampling, **self.checked_sampling(sampling or {})}
        self.skipped_samples = 0
        self.flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor
        self.average = StageAverage(ema_decay)  # EMA bookkeeping of both paths (the DeepSpeed one outside the module)
        self.rng = RankRng()  # per-rank RNG streams, exact across resume
        if isinstance(unet, nn.Module):
            self._attach_unet(unet)

    def checked_sampling(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """The options, after a ValueError for any this stage does not know (a misspelled config key)."""
        unknown = set(sampling) - set(self.default_sampling)
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}; valid: {sorted(self.default_sampling)}")
        return sampling

    @property
    def image_size(self) -> int:
        """The side in pixels of the images this stage samples."""
        return self.unet.image_size

    def _under_deepspeed(self) -> bool:
        return self._trainer is not None and hasattr(self._trainer.strategy, "deepspeed_engine")

    def _attach_unet(self, unet: nn.Module) -> None:
        self.unet = unet.to(memory_format=torch.channels_last) if self.channels_last else unet
        self.ema = self.average.submodule(self.unet, self._under_deepspeed())
        if self.compile_unet:  # in place (state-dict keys unchanged), after the EMA copy: sampling stays eager
            self.unet.compile()

    def configure_model(self) -> None:
        """Build the U-Net from its factory under the strategy's init context (sharded under ZeRO-3)."""
        if self.unet is None:
            if self.unet_factory is None:
                raise RuntimeError("BaseStage has neither a U-Net nor a factory to build one")
            self._attach_unet(self.unet_factory())
        elif self._under_deepspeed():
            self.ema = None

    def on_fit_start(self) -> None:
        if self.ema is not None:
            expect_eval_modules(len(list(self.ema.module.modules())))
        self.rng.on_fit_start(self)
        self.average.on_fit_start(self.unet, self._under_deepspeed())

    def _net_fn(self, net: nn.Module) -> Callable[..., Tensor]:
        """The network with its floating inputs cast to its weight dtype (bf16 under DeepSpeed) and fp32 output.

        The noise levels t and aug_level stay fp32 into the sinusoidal embedding: in bf16, t = 0.999 rounds to 1.0
        and the log-SNR it stands for moves from -12.9 to -20.
        """
        dtype = next(net.parameters()).dtype

        def fn(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
            kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k not in FP32_INPUTS else v
                      for k, v in kwargs.items()}
            return net(x.to(dtype), t.float(), **kwargs).float()

        return fn

    def condition(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Network inputs besides x_t, t and the text, for training; the SR stage adds its low-res image."""
        return {}

    def diffusion_target(self, images: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """What the diffusion models: the images themselves; the SR stage may model their residual instead."""
        return images

    def drop_text(self, text_embeds: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the caption by the null condition with probability cond_drop_prob (Imagen Sec. 2.2)."""
        keep = torch.rand(text_embeds.shape[0], device=text_embeds.device) >= self.cond_drop_prob  # (B,)
        return text_embeds * keep[:, None, None].to(text_embeds.dtype), text_mask & keep[:, None]

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.flops_per_batch is None:
            self.flops_per_batch = count_flops(self, batch)
        self.rng.on_train_batch_start(self)

    def flops_inputs(self, meta: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """Network inputs besides x_t, t and the text for count_flops, from meta copies of the batch."""
        return {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["images"].float()  # the diffusion maths runs in fp32 whatever the weights' dtype
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        text_embeds, text_mask = self.drop_text(batch["text_embeds"].float(), batch["text_mask"])
        cond = self.condition(batch)
        losses, t = self.diffusion.training_loss(
            self._net_fn(self.unet), self.diffusion_target(images, cond), text_embeds=text_embeds,
            text_mask=text_mask, **cond
        )
        loss = losses.mean()
        self.skipped_samples += int(batch.get("n_skipped", 0))
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log_loss_by_noise_level(losses.detach(), t)
        self.log("data/skipped_samples", float(self.skipped_samples), batch_size=images.shape[0])
        return loss

    def log_loss_by_noise_level(self, losses: Tensor, t: Tensor) -> None:
        """Mean loss per bucket of t: where in the noise range the model is still learning. Only on the steps the
        logger writes, and without a host sync: per-bucket sums on the device (an empty bucket reads NaN)."""
        if self._trainer is not None and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps):
            return
        for name, value in zip(NOISE_BUCKET_NAMES, loss_by_noise_level(losses, t), strict=True):
            self.log(name, value, batch_size=losses.shape[0])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.unet.parameters() if p.grad is not None]
        if grads:  # the norm before clipping; DeepSpeed keeps its grads in partitions, logged after the step
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # The EMA follows each optimizer step here, before any callback's on_train_batch_end (ModelCheckpoint):
        # a checkpoint then holds the EMA of the same step as the weights, and resuming from it is exact.
        self.average.update(self.ema, self.unet)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        norm = self.trainer.strategy.deepspeed_engine.get_global_grad_norm() if self._under_deepspeed() else None
        if norm is not None:
            self.log("train/grad_norm", float(norm))

    def configure_optimizers(self) -> Any:
        if self._trainer is not None and offloads_optimizer(self.trainer.strategy):
            optimizer = cpu_adam(self.optimizer_factory, self.unet.parameters())
        else:
            optimizer = self.optimizer_factory(params=self.unet.parameters())
            refuse_partitioned(optimizer, self._under_deepspeed())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if self._trainer is not None:
            attach_budget_clock(scheduler, self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_samples"] = self.skipped_samples
        self.rng.save(self, checkpoint)  # noise, t and caption dropout continue exactly
        self.average.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))
        self.rng.load(self, checkpoint)
        self.average.load(checkpoint)

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
        size: tuple[int, int] | None = None,
        shared: dict[str, Tensor] | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Sample images in [-1, 1] for text embeds [B, L, D] and mask [B, L] (Imagen Sec. 2.2-2.3).

        For subclasses: `size` (H, W) overrides the U-Net's image_size; `shared` holds network inputs given alike
        to the conditional and the null branch of guidance (the SR stage's low-res image, Imagen Sec. 2.4).
        """
        settings = self.sampling_settings(sampling)
        net = self.sampling_net(use_ema)
        text_embeds = text_embeds.to(self.device)
        text_mask = text_mask.to(self.device)
        noise = start_noise(net, text_embeds.shape[0], size, generator, text_embeds.device)
        denoise = self.denoiser(net, text_embeds, text_mask, settings, shared)
        with text_cache(net):  # the text side (projection, pooling, attention keys/values) once, not every step
            return self.diffusion.run_sampler(denoise, noise, generator=generator, callback=callback,
                                              disable=not progress, **run_settings(settings))

    def sampling_settings(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """The stored sampling settings with `sampling`'s over them (a ValueError for an unknown key)."""
        self.checked_sampling(sampling)
        return {k: v for k, v in {**self.sampling, **sampling}.items() if k in DEFAULT_SAMPLING}

    def sampling_net(self, use_ema: bool = True) -> nn.Module:
        """The network that samples: the EMA weights unless use_ema is False."""
        averaged = self.average.current(self.ema)
        # Under ZeRO-3 the EMA lives in per-rank shards: grids during training use the live weights; sample.py
        # samples the EMA from the converted checkpoint (imagen_lit.zero_checkpoint).
        return averaged.module if use_ema and isinstance(averaged, EMA) else self.unet

    def denoiser(
        self, net: nn.Module, text_embeds: Tensor, text_mask: Tensor, settings: dict[str, Any],
        shared: dict[str, Tensor] | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """x0_hat(x_t, t) of `net` for these captions: guided and thresholded as `settings` say (Sec. 2.2-2.3)."""
        null_cond = {"text_embeds": torch.zeros_like(text_embeds), "text_mask": torch.zeros_like(text_mask)}
        return self.diffusion.make_denoiser(
            self._net_fn(net), {"text_embeds": text_embeds, "text_mask": text_mask}, null_cond,
            settings["guidance_weight"], settings["thresholding"], settings["percentile"], shared,
            settings["guidance_interval"],
        )


def start_noise(net: nn.Module, batch: int, size: tuple[int, int] | None, generator: torch.Generator | None,
                device: torch.device) -> Tensor:
    """x_1 ~ N(0, I) [B, C, H, W]: the net's channels, its image_size unless `size` (H, W) is given."""
    height, width = size or (net.image_size, net.image_size)
    return torch.randn((batch, getattr(net, "in_channels", 3), height, width), generator=generator, device=device)


def run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The sampler's own keys of a stage's sampling settings (the rest shape the denoiser)."""
    return {k: settings[k] for k in ("sampler", "steps", "eta")}
