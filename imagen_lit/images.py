"""Image tensors to files: uint8 conversion, grids and PNG writing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [-1, 1], [B, 3, H, W] -> uint8 array [B, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c").cpu().numpy()


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> Tensor:
    """Tile [B, 3, H, W] images into one [3, H', W'] grid, nrow images per row, padded with white."""
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    canvas = images.new_ones(rows * nrow, c, h + 2 * pad, w + 2 * pad)
    canvas[:b, :, pad : pad + h, pad : pad + w] = images
    return rearrange(canvas, "(r n) c h w -> c (r h) (n w)", n=nrow)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write one [3, H, W] image in [-1, 1] as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)
    return path


def read_png(path: str | Path) -> Tensor:
    """An RGB (or palette) image file -> [3, H, W] in [-1, 1], the inverse of save_png; ValueError otherwise."""
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read: pass an RGB PNG or JPEG") from None
    with im:
        if im.mode not in ("RGB", "P"):
            raise ValueError(f"{path} is {im.mode} ({len(im.getbands())} channels): RGB images (3 channels) only")
        pixels = torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8))  # (H, W, 3)
    return rearrange(pixels, "h w c -> c h w").float().div(127.5).sub(1.0)


def split_grid(grid: np.ndarray, count: int, image_size: int, nrow: int, pad: int = 2) -> np.ndarray:
    """Inverse of make_grid on a saved uint8 grid [H', W', 3] -> the first `count` tiles [B, H, W, 3]."""
    side = image_size + 2 * pad
    rows = math.ceil(count / nrow)
    if grid.shape[0] < rows * side or grid.shape[1] < nrow * side:
        raise ValueError(f"grid of shape {grid.shape} is too small for {count} tiles of {image_size}px, {nrow} per row")
    tiles = rearrange(grid[: rows * side, : nrow * side], "(r h) (n w) c -> (r n) h w c", h=side, w=side)
    return tiles[:count, pad : pad + image_size, pad : pad + image_size]
