"""Colour fidelity of generated images: which named colour dominates the foreground (a check for Sec. 4.4-style
alignment on the synthetic world; the full compositional scorer builds on it)."""

from __future__ import annotations

import numpy as np

from imagen_lit.data.world import COLOURS


def dominant_colour(image: np.ndarray, min_foreground: float = 0.01, threshold: float = 60.0) -> str | None:
    """Named colour with the most foreground pixels of a uint8 [H, W, 3] image; None if no foreground.

    The background is the median of the border pixels; a pixel is foreground when it is further than
    `threshold` (RGB distance) from it, and votes for its nearest named colour.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 image [H, W, 3], got shape {image.shape}")
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (4 * side, 3)
    background = np.median(border, axis=0)
    fg = pixels[np.linalg.norm(pixels - background, axis=-1) > threshold]  # (N, 3)
    if len(fg) < min_foreground * image.shape[0] * image.shape[1]:
        return None
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)  # (K, 3)
    nearest = np.linalg.norm(fg[:, None] - palette[None], axis=-1).argmin(1)  # (N,)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def colour_accuracy(images: np.ndarray, colours: list[str]) -> float:
    """Fraction of uint8 images [B, H, W, 3] whose dominant colour is the named one."""
    if len(images) != len(colours) or not colours:
        raise ValueError(f"need one colour per image, got {len(images)} images and {len(colours)} colours")
    unknown = set(colours) - set(COLOURS)
    if unknown:
        raise ValueError(f"unknown colours {sorted(unknown)}; known: {sorted(COLOURS)}")
    hits = [dominant_colour(img) == c for img, c in zip(images, colours, strict=True)]
    return float(np.mean(hits))
