"""The base text-to-image stage (Imagen Sec. 2.2-2.3): a thin LightningModule over the diffusion core."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import Tensor, nn

from imagen_lit.diffusion import GaussianDiffusion
from imagen_lit.models.ema import EMA, ShardedEMA, is_zero3_partitioned
from imagen_lit.models.text_cache import text_cache
from imagen_lit.stages.console import expect_eval_modules
from imagen_lit.zero_checkpoint import DEEPSPEED_EMA_KEY

RNG_STATES_KEY = "rng_states"
NOISE_BUCKETS = 4  # train/loss is also logged per quarter of t, the noise level
NOISE_BUCKET_NAMES = tuple(f"train/loss_t{i / NOISE_BUCKETS:.2f}-{(i + 1) / NOISE_BUCKETS:.2f}"
                           for i in range(NOISE_BUCKETS))
FP32_INPUTS = ("aug_level",)  # noise levels, kept fp32 like t whatever the weights' dtype


def rng_states() -> dict[str, Tensor]:
    """This process's torch RNG states: CPU, and the current CUDA device's when there is one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict[str, Tensor]) -> None:
    """Set the states saved by rng_states()."""
    torch.set_rng_state(states["cpu"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())

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
        self.ema_decay = ema_decay
        self.cond_drop_prob = cond_drop_prob
        self.channels_last = channels_last
        self.compile_unet = compile
        self.sampling = {**self.default_sampling, **self.checked_sampling(sampling or {})}
        self.skipped_samples = 0
        self.flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor
        # Under DeepSpeed the EMA is not a submodule (the engine would cast it to bf16 and, under ZeRO-3, shard it):
        # it is made in on_fit_start, fp32, and travels in the checkpoint's client state.
        self._deepspeed_ema: EMA | ShardedEMA | None = None
        self._pending_deepspeed_ema: dict[str, Any] | None = None
        self._pending_rng_states: list[dict[str, Any]] | None = None
        if isinstance(unet, nn.Module):
            self._attach_unet(unet)

    def checked_sampling(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """The options, after a ValueError for any this stage does not know (a misspelled config key)."""
        unknown = set(sampling) - set(self.default_sampling)
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}; valid: {sorted(self.default_sampling)}")
        return sampling

    def _under_deepspeed(self) -> bool:
        return self._trainer is not None and hasattr(self._trainer.strategy, "deepspeed_engine")

    def _attach_unet(self, unet: nn.Module) -> None:
        self.unet = unet.to(memory_format=torch.channels_last) if self.channels_last else unet
        self.ema = None if self._under_deepspeed() else EMA(self.unet, decay=self.ema_decay)
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
        if self.trainer.world_size > 1 and self._pending_rng_states is None:
            # seed_everything gives every rank the same seed: without an offset all ranks would draw the same t and
            # noise each step, and the global batch would hold world_size copies of one noise draw.
            torch.manual_seed(torch.initial_seed() + self.global_rank)
        if not self._under_deepspeed():
            return
        if is_zero3_partitioned(self.unet):
            ema: EMA | ShardedEMA = ShardedEMA(self.unet, decay=self.ema_decay)
        else:
            ema = EMA(self.unet, decay=self.ema_decay).float()
        if self._pending_deepspeed_ema is not None:
            ema.load_state_dict(self._pending_deepspeed_ema)
            self._pending_deepspeed_ema = None
        object.__setattr__(self, "_deepspeed_ema", ema)  # bypass nn.Module registration on purpose

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

    def drop_text(self, text_embeds: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the caption by the null condition with probability cond_drop_prob (Imagen Sec. 2.2)."""
        keep = torch.rand(text_embeds.shape[0], device=text_embeds.device) >= self.cond_drop_prob  # (B,)
        return text_embeds * keep[:, None, None].to(text_embeds.dtype), text_mask & keep[:, None]

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.flops_per_batch is None:
            self.flops_per_batch = self.count_flops(batch)
        if self._pending_rng_states is not None:
            # Restored here, not in on_load_checkpoint: creating the resumed run's data iterator draws from the
            # global RNG, which the uninterrupted run did at the start of the epoch, before the saved state.
            restore_rng_states(self._pending_rng_states[self.global_rank])
            self._pending_rng_states = None

    def count_flops(self, batch: dict[str, Any]) -> int:
        """Forward + backward FLOPs of one training batch, counted on a meta-device copy of the U-Net."""
        if self.unet_factory is not None:  # also right under ZeRO-3, where self.unet holds only shards
            with torch.device("meta"):
                net = self.unet_factory()
        else:
            net = copy.deepcopy(self.unet).to("meta")
        # fp32 meta inputs whatever the batch dtype (DeepSpeed hands bf16 batches to a fp32 meta copy)
        meta = {k: torch.empty(v.shape, device="meta", dtype=torch.bool if v.dtype == torch.bool else torch.float32)
                for k, v in batch.items() if torch.is_tensor(v)}
        t = torch.empty(meta["images"].shape[0], device="meta")
        extra = self.flops_inputs(meta, t)
        return int(measure_flops(
            net, lambda: net(meta["images"], t, meta["text_embeds"], meta["text_mask"], **extra),
            loss_fn=torch.Tensor.sum,
        ))

    def flops_inputs(self, meta: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """Network inputs besides x_t, t and the text for count_flops, from meta copies of the batch."""
        return {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["images"].float()  # the diffusion maths runs in fp32 whatever the weights' dtype
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        text_embeds, text_mask = self.drop_text(batch["text_embeds"].float(), batch["text_mask"])
        losses, t = self.diffusion.training_loss(
            self._net_fn(self.unet), images, text_embeds=text_embeds, text_mask=text_mask, **self.condition(batch)
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
        (self._deepspeed_ema or self.ema).update(self.unet)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        norm = self.trainer.strategy.deepspeed_engine.get_global_grad_norm() if self._under_deepspeed() else None
        if norm is not None:
            self.log("train/grad_norm", float(norm))

    def configure_optimizers(self) -> Any:
        if self._offloads_optimizer():
            optimizer = self._cpu_adam(self.unet.parameters())
        else:
            optimizer = self.optimizer_factory(params=self.unet.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's torch RNG states (CPU and CUDA), gathered so that rank 0's checkpoint holds them all."""
        state = rng_states()
        if self._trainer is None or self.trainer.world_size == 1:
            return [state]
        gathered = {}
        for key in ("cpu", "cuda"):
            if key in state:  # (world, n) uint8 on the collective's device, back on CPU per rank
                stacked = self.all_gather(state[key].to(self.device))
                gathered[key] = [t.cpu() for t in stacked]
        return [{k: v[r] for k, v in gathered.items()} for r in range(self.trainer.world_size)]

    def _offloads_optimizer(self) -> bool:
        config = getattr(self._trainer.strategy, "config", None) if self._trainer is not None else None
        return bool(isinstance(config, dict) and config.get("zero_optimization", {}).get("offload_optimizer"))

    def _cpu_adam(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """ZeRO-Offload steps on CPU: the configured Adam/AdamW as DeepSpeedCPUAdam, same hyperparameters."""
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        func = getattr(self.optimizer_factory, "func", None)
        if func not in (torch.optim.AdamW, torch.optim.Adam):
            raise ValueError(f"optimizer offload supports Adam/AdamW, got {func}; use deepspeed_zero3 instead")
        keywords = getattr(self.optimizer_factory, "keywords", {})
        kwargs = {k: keywords[k] for k in ("lr", "betas", "eps", "weight_decay") if k in keywords}
        return DeepSpeedCPUAdam(params, adamw_mode=func is torch.optim.AdamW, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint[RNG_STATES_KEY] = self._gather_rng_states()  # noise, t and caption dropout continue exactly
        if self._deepspeed_ema is not None:  # client state: rank 0's under ZeRO-2, every rank's shard under ZeRO-3
            checkpoint[DEEPSPEED_EMA_KEY] = self._deepspeed_ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))
        states = checkpoint.get(RNG_STATES_KEY)
        if states is not None and len(states) == self.trainer.world_size:
            self._pending_rng_states = states
        elif states is not None:
            warnings.warn(f"checkpoint holds RNG states of {len(states)} ranks, this run has "
                          f"{self.trainer.world_size}: noise and t restart from fresh per-rank seeds", stacklevel=2)
        if DEEPSPEED_EMA_KEY in checkpoint:
            if self._deepspeed_ema is not None:
                self._deepspeed_ema.load_state_dict(checkpoint[DEEPSPEED_EMA_KEY])
            else:  # DeepSpeed restores before on_fit_start makes the EMA
                self._pending_deepspeed_ema = checkpoint[DEEPSPEED_EMA_KEY]

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
        self.checked_sampling(sampling)
        settings = {k: v for k, v in {**self.sampling, **sampling}.items() if k in DEFAULT_SAMPLING}
        averaged = self._deepspeed_ema or self.ema
        # Under ZeRO-3 the EMA lives in per-rank shards: grids during training use the live weights; sample.py
        # samples the EMA from the converted checkpoint (imagen_lit.zero_checkpoint).
        net = averaged.module if use_ema and isinstance(averaged, EMA) else self.unet
        height, width = size or (net.image_size, net.image_size)
        channels = getattr(net, "in_channels", 3)
        text_embeds = text_embeds.to(self.device)
        text_mask = text_mask.to(self.device)
        noise = torch.randn(
            (text_embeds.shape[0], channels, height, width), generator=generator, device=text_embeds.device
        )
        null_cond = {"text_embeds": torch.zeros_like(text_embeds), "text_mask": torch.zeros_like(text_mask)}
        with text_cache(net):  # the text side (projection, pooling, attention keys/values) once, not every step
            return self.diffusion.sample(
                self._net_fn(net),
                noise,
                cond={"text_embeds": text_embeds, "text_mask": text_mask},
                null_cond=null_cond,
                shared=shared,
                generator=generator,
                callback=callback,
                disable=not progress,
                **settings,
            )
