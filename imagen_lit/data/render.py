"""Draw a `Scene` at any resolution, antialiased by drawing at 4x and box-filtering down."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from imagen_lit.data.world import COLOURS, Scene, SceneObject

SUPERSAMPLE = 4


def render_scene(scene: Scene, resolution: int) -> Image.Image:
    """Render the scene as an RGB image of size resolution x resolution; deterministic."""
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), tuple(scene.background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, side)
    # BOX averages exact pixel areas: smooth edges, no ringing, interior colours kept exactly.
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    fill = COLOURS[obj.colour]
    cx, cy, r = obj.x * side, obj.y * side, obj.extent * side / 2  # bounding-circle centre and radius
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        h = 0.8 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":  # equilateral, pointing up, centred on its centroid
        draw.polygon(_ring(cx, cy + 0.15 * r, [r], 3, -90), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_ring(cx, cy + 0.05 * r, [r, 0.42 * r], 10, -90), fill=fill)
    elif obj.shape == "hexagon":
        draw.polygon(_ring(cx, cy, [r], 6, 0), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; add it to render._draw_object and world.SHAPES")


def _ring(cx: float, cy: float, radii: list[float], n: int, start_deg: float) -> list[tuple[float, float]]:
    """n points evenly spaced on a circle, cycling through radii (two radii make a star)."""
    points = []
    for i in range(n):
        a = math.radians(start_deg + 360 * i / n)
        rad = radii[i % len(radii)]
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return points
