"""Low-res conditioning images derived from the high-res ones, so one set of shards serves every stage.

The super-resolution stages (Imagen Sec. 2.4-2.5) take an antialiased downsample of each training image; the last
stage trains on aligned random crops (Imagen App. F: the 256->1024 model on 64->256 crops).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from imagen_lit.data.sources import pass_key


def downsample(images: Tensor, size: int) -> Tensor:
    """[B, C, H, W] or [C, H, W] in [-1, 1] -> side `size`: antialiased bicubic, clamped back to [-1, 1]."""
    batched = images.dim() == 4
    x = images if batched else images[None]  # (B, C, H, W)
    out = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    out = out.clamp(-1.0, 1.0).to(images.dtype)  # bicubic overshoots at edges
    return out if batched else out[0]


def aligned_crop(image: Tensor, lowres: Tensor, crop_size: int, rng: random.Random) -> tuple[Tensor, Tensor]:
    """Random crop_size crop of image [C, H, W] and the matching crop of lowres [C, h, w], offset a multiple of H/h."""
    scale = image.shape[-1] // lowres.shape[-1]
    low = crop_size // scale
    top = rng.randrange(lowres.shape[-2] - low + 1)  # in low-res pixels, so the high-res offset is aligned
    left = rng.randrange(lowres.shape[-1] - low + 1)
    hi = image[:, top * scale : top * scale + crop_size, left * scale : left * scale + crop_size]
    return hi.contiguous(), lowres[:, top : top + low, left : left + low].contiguous()


def check_lowres_options(resolution: int, lowres_resolution: int | None, crop_size: int | None) -> None:
    """ValueError unless lowres_resolution divides resolution and crop_size is a whole number of low-res pixels."""
    if lowres_resolution is None:
        if crop_size is not None:
            raise ValueError("crop_size is for super-resolution data: set lowres_resolution too")
        return
    if not 1 <= lowres_resolution < resolution or resolution % lowres_resolution:
        raise ValueError(f"lowres_resolution must divide resolution {resolution} and be smaller, e.g. "
                         f"{resolution // 4}; got {lowres_resolution}")
    scale = resolution // lowres_resolution
    if crop_size is not None and (not scale <= crop_size <= resolution or crop_size % scale):
        raise ValueError(f"crop_size must be a multiple of the scale {scale} between {scale} and {resolution}, "
                         f"got {crop_size}")


class LowResPairs:
    """Pipeline stage: add each sample's 'lowres'; with crop_size, crop both, seeded by (seed, key, epoch, pass)
    (Passes sets epoch and pass_index)."""

    def __init__(self, lowres_resolution: int, crop_size: int | None = None, seed: int = 0) -> None:
        self.lowres_resolution, self.crop_size, self.seed = lowres_resolution, crop_size, seed
        self.epoch, self.pass_index = 0, 0

    def __call__(self, src):
        for sample in src:
            image = sample["image"]
            lowres = downsample(image, self.lowres_resolution)  # the whole image first: what the cascade sees
            if self.crop_size is not None:
                rng = random.Random(f"{self.seed}/{sample['key']}/{pass_key(self.epoch, self.pass_index)}")
                image, lowres = aligned_crop(image, lowres, self.crop_size, rng)
            yield {**sample, "image": image, "lowres": lowres}


def stack_lowres(samples: list[dict]) -> dict[str, Tensor]:
    """{'lowres': (B, C, h, w)} when the samples carry one, else {}."""
    return {"lowres": torch.stack([s["lowres"] for s in samples])} if "lowres" in samples[0] else {}
