"""A dependency-free line plot (PIL) for the guidance Pareto curves: x against y, one curve per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CURVE_COLOURS = {"none": (120, 120, 120), "static": (220, 60, 40), "dynamic": (40, 90, 220)}
OTHER_COLOURS = [(40, 160, 70), (150, 60, 180), (230, 150, 20), (0, 150, 170), (200, 40, 120)]  # 5 distinct


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def draw_curves(
    curves: dict[str, list[tuple]], x_label: str, y_label: str, title: str,
    size: tuple[int, int] = (900, 640),
) -> np.ndarray:
    """uint8 [H, W, 3] plot of curves {name: [(label, x, y), ...]}: lines through the points, each labelled (a number
    or a name); a point (label, x, y, lo, hi) also gets an error bar from lo to hi."""
    points = [(p[1], v) for pts in curves.values() for p in pts for v in (p[2], *p[3:5])]
    if not points:
        raise ValueError("nothing to plot: no finished jobs with both metrics")
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    x_lo, x_hi = float(xs.min()), float(xs.max())
    y_lo, y_hi = float(ys.min()), float(ys.max())
    x_pad, y_pad = (x_hi - x_lo) * 0.08 or 1.0, (y_hi - y_lo) * 0.08 or 0.05
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad
    w, h = size
    left, right, top, bottom = 80, 30, 50, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (w - left - right),
                h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for x in _ticks(x_lo, x_hi):
        px, _ = to_px(x, y_lo)
        draw.line([px, h - bottom, px, h - bottom + 5], fill="black")
        draw.text((px - 15, h - bottom + 8), f"{x:.3g}", fill="black")
    for y in _ticks(y_lo, y_hi):
        _, py = to_px(x_lo, y)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((8, py - 6), f"{y:.3g}", fill="black")
    draw.text((w // 2 - 60, h - 25), x_label, fill="black")
    draw.text((8, 12), f"{y_label}   ({title})", fill="black")
    for i, (name, pts) in enumerate(curves.items()):
        colour = CURVE_COLOURS.get(name, OTHER_COLOURS[i % len(OTHER_COLOURS)])
        pixels = [to_px(p[1], p[2]) for p in pts]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for point, (px, py) in zip(pts, pixels, strict=True):
            if len(point) == 5:  # error bar
                (_, top_y), (_, low_y) = to_px(point[1], point[4]), to_px(point[1], point[3])
                draw.line([px, top_y, px, low_y], fill=colour, width=1)
                draw.line([px - 3, top_y, px + 3, top_y], fill=colour)
                draw.line([px - 3, low_y, px + 3, low_y], fill=colour)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            label = point[0]
            text = f"{label:g}" if isinstance(label, (int, float)) else str(label)
            width = draw.textlength(text)
            tx = px + 5 if px + 5 + width <= w - right else px - 5 - width  # left of the point near the frame's edge
            draw.text((tx, py - 12), text, fill=colour)
        draw.text((w - right - 110, top + 10 + 16 * i), f"-- {name}", fill=colour)
    return np.asarray(image)


def save_plot(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H, W, 3] plot as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
