"""The super-resolution stages (Imagen Sec. 2.4-2.5): the base stage plus a noise-augmented low-res image."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from imagen_lit.diffusion import GaussianDiffusion, check_aug_level, noise_augment, sample_aug_level
from imagen_lit.models.inputs import upsample_lowres
from imagen_lit.models.layers import TextAttention
from imagen_lit.stages.base import DEFAULT_SAMPLING, BaseStage

SR_DEFAULT_SAMPLING = {**DEFAULT_SAMPLING, "aug_level": 0.3}  # Imagen Fig. A.12: 0.3 at 64->256


def total_stride(net: nn.Module) -> int:
    """Product of the strides of the U-Net's downsampling convolutions: sample sizes must be a multiple of it."""
    return math.prod(m.stride[0] for m in net.modules() if isinstance(m, nn.Conv2d) and m.stride[0] > 1)


def has_self_attention(net: nn.Module) -> bool:
    """Whether any attention layer attends over image positions (its output then depends on the image size)."""
    return any(isinstance(m, TextAttention) and m.self_attention for m in net.modules())


class SRStage(BaseStage):
    """Text-conditional super-resolution by `image_size / lowres_size` (Imagen Sec. 2.4-2.5, App. F).

    The same diffusion core, EMA, optimizer and logging as BaseStage; the network also gets the low-res image
    (upsampled and concatenated inside the U-Net) and its noise-augmentation level. With noise_aug the low-res
    image is noised by q(z_s | x) at s ~ U(0, max_aug_level) in training (the paper: U(0, 1)) and at the fixed
    sampling["aug_level"] when sampling; without it (the ablation) the network always gets the clean image and
    aug_level = 0.
    residual: the diffusion models (x - bicubic(low-res input)) * residual_scale, the detail that bicubic upsampling of
    the (noise-augmented) low-res image misses, and sampling adds that upsampling back (not in the paper; SR3-style
    stages model x itself). An untrained residual stage already returns bicubic upsampling.
    fully_convolutional marks a stage trained on crops (Imagen's 256->1024 model, trained on 64->256 crops):
    generate then takes a low-res image of any size and returns it `scale` times larger.
    Other arguments are BaseStage's.
    """

    default_sampling = SR_DEFAULT_SAMPLING

    def __init__(
        self,
        unet: nn.Module | Callable[[], nn.Module],
        diffusion: GaussianDiffusion,
        *,
        lowres_size: int | None,
        noise_aug: bool = True,
        max_aug_level: float = 1.0,
        residual: bool = False,
        residual_scale: float = 1.0,
        fully_convolutional: bool = False,
        sampling: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        sampling = {**SR_DEFAULT_SAMPLING, **self.checked_sampling(sampling or {})}
        check_aug_level(sampling["aug_level"])
        if not noise_aug and sampling["aug_level"] != 0:
            raise ValueError(
                f"noise_aug=false trains on clean low-res images only (aug_level 0); sampling.aug_level must be 0, "
                f"got {sampling['aug_level']}: set stage.sampling.aug_level=0"
            )
        if not 0.0 < max_aug_level <= 1.0:
            raise ValueError(f"max_aug_level must be in (0, 1] (training draws aug_level ~ U(0, max)), "
                             f"got {max_aug_level}")
        if sampling["aug_level"] > max_aug_level:
            raise ValueError(f"sampling.aug_level {sampling['aug_level']} is above max_aug_level {max_aug_level}, a "
                             f"level this stage never trains on: lower stage.sampling.aug_level or raise max_aug_level")
        if not residual_scale > 0:
            raise ValueError(f"residual_scale must be > 0 (the residual is multiplied by it), got {residual_scale}")
        if lowres_size is None or lowres_size < 1:
            raise ValueError(f"lowres_size must be the low-res image side in pixels (e.g. 64; conf/stage/sr.yaml takes "
                             f"data.lowres_resolution), got {lowres_size}")
        super().__init__(unet, diffusion, sampling=sampling, **kwargs)
        self.lowres_size = int(lowres_size)
        self.noise_aug = noise_aug
        self.max_aug_level = float(max_aug_level)
        self.residual = residual
        self.residual_scale = float(residual_scale)
        self.fully_convolutional = fully_convolutional
        self.scale: int | None = None  # image_size // lowres_size, set once the U-Net exists
        if self.unet is not None:
            self._check_unet(self.unet)

    def configure_model(self) -> None:
        super().configure_model()
        self._check_unet(self.unet)

    def _check_unet(self, unet: nn.Module) -> None:
        """The U-Net takes a low-res image, its size is a whole multiple of lowres_size, and crops are safe."""
        if not getattr(unet, "lowres_cond", False):
            raise ValueError("SRStage needs a super-resolution U-Net: build it with lowres_cond=true")
        size = unet.image_size
        if size % self.lowres_size or size <= self.lowres_size:
            raise ValueError(
                f"the U-Net's image_size {size} must be a whole multiple (> 1) of lowres_size {self.lowres_size}"
            )
        if self.fully_convolutional and has_self_attention(unet):
            raise ValueError(
                "fully_convolutional=true needs a U-Net without self-attention (e.g. unet=sr_small_nosa): "
                "self-attention trained on crops sees a different number of positions at full size"
            )
        self.scale = size // self.lowres_size

    def augment(
        self, lowres: Tensor, aug_level: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(noised low-res image, aug_level [B]); aug_level None draws U(0, max_aug_level) per sample (Sec. 2.4)."""
        lowres = lowres.float()
        if not self.noise_aug:
            return lowres, lowres.new_zeros(lowres.shape[0])
        if aug_level is None:
            aug_level = sample_aug_level(lowres.shape[0], generator, lowres.device, self.max_aug_level)
        return noise_augment(lowres, aug_level, self.diffusion.schedule, generator=generator), aug_level

    def condition(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The noise-augmented low-res image and its level, for the training loss (Imagen Sec. 2.4)."""
        if batch.get("lowres") is None:
            raise ValueError("SRStage needs batch['lowres']: set data.lowres_resolution (e.g. 64 for 64->256)")
        lowres, images = batch["lowres"], batch["images"]
        if tuple(images.shape[-2:]) != (lowres.shape[-2] * self.scale, lowres.shape[-1] * self.scale):
            raise ValueError(
                f"batch images are {tuple(images.shape[-2:])} and lowres {tuple(lowres.shape[-2:])}, but this "
                f"stage upsamples by {self.scale} (image_size / lowres_size): set data.lowres_resolution to "
                f"data.resolution / {self.scale}"
            )
        lowres, aug_level = self.augment(lowres)
        return {"lowres": lowres, "aug_level": aug_level}

    def diffusion_target(self, images: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """x itself, or with residual (x - bicubic(noised low-res)) * residual_scale."""
        if not self.residual:
            return images
        return (images - upsample_lowres(cond["lowres"], images.shape[-2:]).to(images.dtype)) * self.residual_scale

    def flops_inputs(self, meta: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """The low-res image and its aug_level, for imagen_lit.stages.flops.count_flops."""
        return {"lowres": meta["lowres"], "aug_level": t}

    def output_size(self, lowres: Tensor) -> tuple[int, int]:
        """(H, W) of the samples for this low-res batch; ValueError for a wrong shape or channel count."""
        channels = getattr(self.unet, "in_channels", 3)
        if lowres.dim() != 4 or lowres.shape[1] != channels:
            raise ValueError(f"lowres must be [B, {channels}, h, w] in [-1, 1], got shape {tuple(lowres.shape)}")
        h, w = lowres.shape[-2:]
        if not self.fully_convolutional:
            if (h, w) != (self.lowres_size, self.lowres_size):
                raise ValueError(
                    f"lowres must be {self.lowres_size}x{self.lowres_size} (image_size {self.unet.image_size} / "
                    f"scale {self.scale}), got {h}x{w}; resize it with imagen_lit.data.lowres.downsample"
                )
            return self.unet.image_size, self.unet.image_size
        stride = total_stride(self.unet)
        if (h * self.scale) % stride or (w * self.scale) % stride:
            raise ValueError(
                f"lowres {h}x{w} gives {h * self.scale}x{w * self.scale} samples, not a multiple of the U-Net's total "
                f"stride {stride}: crop or pad the low-res image to a multiple of {math.ceil(stride / self.scale)}"
            )
        return h * self.scale, w * self.scale

    @torch.no_grad()
    def generate(
        self,
        text_embeds: Tensor,
        text_mask: Tensor,
        lowres: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sampling: Any,
    ) -> Tensor:
        """Super-resolve lowres [B, C, h, w] in [-1, 1] given text embeds [B, L, D] and mask [B, L] (Sec. 2.4).

        Guidance drops the text only: the (noise-augmented) low-res image goes to both branches.
        """
        self.checked_sampling(sampling)
        aug_level = float(sampling.pop("aug_level", self.sampling["aug_level"]))
        check_aug_level(aug_level)
        if not self.noise_aug and aug_level != 0:
            raise ValueError(f"this stage was trained without noise augmentation; sample with aug_level=0, "
                             f"got {aug_level}")
        if aug_level > self.max_aug_level:
            raise ValueError(f"this stage trained on aug_level <= {self.max_aug_level}; sample with aug_level <= "
                             f"{self.max_aug_level}, got {aug_level}")
        size = self.output_size(lowres)
        if lowres.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"lowres has {lowres.shape[0]} images for {text_embeds.shape[0]} captions")
        lowres = lowres.to(self.device)
        level = torch.full((lowres.shape[0],), aug_level, device=self.device)
        lowres, level = self.augment(lowres, level, generator=generator)
        images = super().generate(
            text_embeds, text_mask, generator=generator, use_ema=use_ema, progress=progress, callback=callback,
            size=size, shared={"lowres": lowres, "aug_level": level}, **sampling,
        )
        if not self.residual:
            return images
        return (images / self.residual_scale + upsample_lowres(lowres, size)).clamp(-1.0, 1.0)
