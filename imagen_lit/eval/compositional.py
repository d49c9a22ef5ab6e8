"""GenEval-style compositional scoring on the synthetic world: find the coloured shapes in an image and check the
claims of the scene spec behind its caption (colour, counting, position, attribute binding).

Detection is classical and deterministic: the background is the median of the border; each pixel is explained as a
mix of the background and one palette colour (its alpha along that colour's line, and how far off the line it is);
connected pixels of one colour well along its line make an object; its shape is the one whose template, sized to the
object's alpha-weighted area, placed on its centroid and blurred as fits best, differs least from its alpha map.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imagen_lit.data.world import COLOURS, KINDS, RELATIONS, SHAPES, Scene, SceneObject

CATEGORIES: tuple[str, ...] = ("colour", "counting", "position", "binding")
KIND_CATEGORY: dict[str, str] = {
    "single": "colour",
    "counting": "counting",
    "spatial": "position",
    "binding": "binding",
}

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)
MIN_SIDE = 16  # below this the world's small shapes are a few pixels across
MIN_PIXELS = 3  # fewer pixels than this are a speck whatever the resolution
EDGE_REACH = 2.0  # an object's soft edge reaches this far from its core (px at 32px)
BLURS = (0.0, 0.3, 0.6, 0.9, 1.2)  # shape templates are also tried blurred by these sigmas (px at 32px)
CORE_ALPHA = 0.6  # a pixel is inside an object when at least this far from the background towards its colour


def _regular(n: int, radii: Sequence[float], start_deg: float) -> np.ndarray:
    """n vertices evenly spaced on the unit circle (cycling through radii), y down -> (n, 2)."""
    a = np.radians(start_deg + 360.0 * np.arange(n) / n)
    r = np.array([radii[i % len(radii)] for i in range(n)])
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


# Each shape in units of its bounding-circle radius, centred on its centroid (the world draws them so).
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": _regular(3, [1.0], -90),
    "star": _regular(10, [1.0, 0.42], -90),
    "hexagon": _regular(6, [1.0], 0),
    "diamond": np.array([[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]]),
}


def _polygon_area(p: np.ndarray) -> float:
    """Shoelace area of a simple polygon (N, 2)."""
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# From a shape's centroid to the centre of its bounding circle (the world's object position), in radii: the world
# draws triangles and stars a little low in their circles.
_CENTRE_OFFSET: dict[str, float] = {"triangle": -0.15, "star": -0.05}

_UNIT_AREA: dict[str, float] = {"circle": math.pi, **{s: _polygon_area(p) for s, p in _POLYGONS.items()}}
if set(_UNIT_AREA) != set(SHAPES):
    raise ImportError(f"compositional scorer knows shapes {sorted(_UNIT_AREA)}, the world has {sorted(SHAPES)}")


@dataclass(frozen=True)
class Detection:
    """One object found in an image: named colour and shape; centre of its bounding circle (x right, y down) and
    extent (that circle's diameter) as fractions of the image side, like a SceneObject; area as a fraction of the
    image; and the shape template's misfit (sum |alpha - template| / area: 0 is a perfect fit, 2 no overlap)."""

    colour: str
    shape: str
    x: float
    y: float
    extent: float
    area: float
    misfit: float


@dataclass(frozen=True)
class Check:
    """One claim of a scene spec tested on an image, in a category of CATEGORIES."""

    category: str
    claim: str
    passed: bool


def _check_image(image: np.ndarray) -> np.ndarray:
    """Validate a uint8 [H, W, 3] image and return it as float32."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 image [H, W, 3], got {got}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image of shape {image.shape} is too small to score; need at least {MIN_SIDE}px a side")
    return image.astype(np.float32)


def _background(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border of [H, W, 3] -> (3,)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (2H + 2W, 3)
    return np.median(border, axis=0)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether unit-shape coordinates (u right, v down) fall inside the shape (even-odd rule for polygons)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    poly = _POLYGONS[shape]
    u, v = np.broadcast_arrays(u, v)
    inside = np.zeros(u.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if y1 == y2:
            continue  # horizontal edges never cross a horizontal ray
        crosses = (y1 > v) != (y2 > v)
        inside ^= crosses & (u < x1 + (v - y1) * (x2 - x1) / (y2 - y1))
    return inside


def _coverage(shape: str, cx: float, cy: float, radius: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each pixel of box (y0, y1, x0, x1) covered by the shape at (cx, cy), by supersampling."""
    y0, y1, x0, x1 = box
    out = np.zeros((y1 - y0, x1 - x0))
    # Only pixels that meet the shape's bounding circle can be covered.
    ty0, ty1 = max(y0, math.floor(cy - radius)), min(y1, math.ceil(cy + radius))
    tx0, tx1 = max(x0, math.floor(cx - radius)), min(x1, math.ceil(cx + radius))
    if ty0 >= ty1 or tx0 >= tx1:
        return out
    s = int(np.clip(round(32 / max(radius, 1e-3)), 2, 8))  # samples per pixel side: more for small shapes
    offsets = (np.arange(s) + 0.5) / s
    ys = (np.arange(ty0, ty1)[:, None] + offsets[None]).reshape(-1)  # ((ty1 - ty0) * s,)
    xs = (np.arange(tx0, tx1)[:, None] + offsets[None]).reshape(-1)  # ((tx1 - tx0) * s,)
    inside = _inside(shape, (xs[None, :] - cx) / radius, (ys[:, None] - cy) / radius)  # (h * s, w * s)
    out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = inside.reshape(ty1 - ty0, s, tx1 - tx0, s).mean(axis=(1, 3))
    return out


def _classify(
    alpha: np.ndarray, box: tuple[int, int, int, int], blurs: Sequence[float]
) -> tuple[str, float, float, float, float]:
    """Best-fitting shape for an object's alpha map (zero outside the object in box), trying each template sharp
    and blurred by each of `blurs` (Gaussian sigma, px): shape, misfit, its bounding circle's centre x, y and
    radius in pixels."""
    y0, y1, x0, x1 = box
    window = alpha[y0:y1, x0:x1]
    area = float(window.sum())
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5  # pixel centres
    cx, cy = float((window * xs).sum() / area), float((window * ys).sum() / area)
    best, best_misfit = SHAPES[0], math.inf
    for shape in SHAPES:
        template = _coverage(shape, cx, cy, math.sqrt(area / _UNIT_AREA[shape]), box)  # sized to the area
        for sigma in blurs:
            fitted = ndimage.gaussian_filter(template, sigma, mode="constant") if sigma > 0 else template
            misfit = float(np.abs(window - fitted).sum() / area)
            if misfit < best_misfit:
                best, best_misfit = shape, misfit
    radius = math.sqrt(area / _UNIT_AREA[best])
    return best, best_misfit, cx, cy + _CENTRE_OFFSET.get(best, 0.0) * radius, radius


def detect_objects(
    image: np.ndarray, min_area: float = 0.006, colour_tolerance: float = 70.0, max_misfit: float = 1.0
) -> list[Detection]:
    """Coloured shapes in a uint8 [H, W, 3] image, largest first.

    A pixel belongs to palette colour k when it lies within `colour_tolerance` (RGB distance) of the line from the
    background to colour k, at least CORE_ALPHA of the way along it. Connected pixels of one colour (4-neighbours)
    covering at least `min_area` of the image are an object's core; its soft edge is the nearby pixels closer to it
    than to any other core. Objects whose best shape misfit exceeds `max_misfit` are dropped.
    """
    pixels = _check_image(image)
    h, w, _ = pixels.shape
    scale = min(h, w) / 32  # lengths below are in pixels of a 32px image
    background = _background(pixels)
    offset = pixels - background  # (H, W, 3)
    lines = _PALETTE - background  # (K, 3): background -> colour k
    along = np.clip(offset @ lines.T / (lines**2).sum(1), 0.0, 1.0)  # (H, W, K)
    off_line = np.linalg.norm(offset[:, :, None] - along[..., None] * lines, axis=-1)  # (H, W, K)
    label = off_line.argmin(-1)  # (H, W)
    alpha = np.take_along_axis(along, label[..., None], -1)[..., 0]  # (H, W)
    core = (alpha >= CORE_ALPHA) & (off_line.min(-1) <= colour_tolerance)

    owner = np.zeros((h, w), dtype=np.int64)  # 0: no object; i: core of the i-th object
    colours: list[int] = []
    for k in range(len(_NAMES)):
        labelled, count = ndimage.label(core & (label == k))
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)
        for i in range(1, count + 1):
            if sizes[i] >= max(min_area * h * w, MIN_PIXELS):
                colours.append(k)
                owner[labelled == i] = len(colours)
    if not colours:
        return []
    distance, (iy, ix) = ndimage.distance_transform_edt(owner == 0, return_indices=True)
    nearest = np.where(distance <= max(2.0, EDGE_REACH * scale), owner[iy, ix], 0)  # (H, W): soft edges too

    detections = []
    blurs = [b * scale for b in BLURS]
    pad = 1 + math.ceil(3 * max(blurs))
    for i, k in enumerate(colours, start=1):
        mask, region = owner == i, nearest == i
        # The object's own colour (generated images drift off the palette): median of its solid pixels.
        solid = mask & (alpha >= 0.8)
        colour = np.median(pixels[solid if solid.any() else mask], axis=0) - background  # (3,)
        own = np.clip(offset @ colour / max(float(colour @ colour), 1.0), 0.0, 1.0)  # (H, W)
        obj_alpha = np.where(region, own, 0.0)
        if obj_alpha.sum() <= 0:
            continue
        rows, cols = np.nonzero(region)
        box = (
            max(rows.min() - pad, 0),
            min(rows.max() + pad + 1, h),
            max(cols.min() - pad, 0),
            min(cols.max() + pad + 1, w),
        )
        shape, misfit, cx, cy, radius = _classify(obj_alpha, box, blurs)
        if misfit > max_misfit:
            continue
        side = math.sqrt(h * w)
        area = float(obj_alpha.sum()) / (h * w)
        detections.append(Detection(_NAMES[k], shape, cx / w, cy / h, 2 * radius / side, area, misfit))
    return sorted(detections, key=lambda d: -d.area)


def _as_scene(scene: Scene | str | Mapping) -> Scene:
    """A Scene from itself, its JSON text or the parsed JSON; validated against the world's vocabulary."""
    try:
        if isinstance(scene, str):
            scene = Scene.from_json(scene)
        elif isinstance(scene, Mapping):
            scene = Scene.from_json(json.dumps(dict(scene)))
    except (KeyError, TypeError) as e:  # JSON that is not a scene spec (bad JSON is already a ValueError)
        raise ValueError(f"not a scene spec as Scene.to_json writes it: missing or bad field {e}") from e
    if not isinstance(scene, Scene):
        raise ValueError(f"expected a Scene, its JSON or a dict, got {type(scene).__name__}")
    if scene.kind not in KINDS:
        raise ValueError(f"unknown scene kind {scene.kind!r}; expected one of {tuple(KINDS)}")
    if not scene.objects:
        raise ValueError("scene has no objects to check")
    for o in scene.objects:
        if o.colour not in COLOURS or o.shape not in SHAPES:
            raise ValueError(f"unknown colour or shape in {o}; colours {tuple(COLOURS)}, shapes {SHAPES}")
    for s, rel, o in scene.relations:
        if rel not in RELATIONS or not (0 <= s < len(scene.objects) and 0 <= o < len(scene.objects)):
            raise ValueError(f"bad relation {(s, rel, o)} for {len(scene.objects)} objects; relations {RELATIONS}")
    return scene


def scene_detections(scene: Scene | str | Mapping) -> list[Detection]:
    """What a perfect detector would report for a rendering of the scene (an oracle for chance levels)."""
    scene = _as_scene(scene)
    found = [
        Detection(o.colour, o.shape, o.x, o.y, o.extent, _UNIT_AREA[o.shape] * (o.extent / 2) ** 2, 0.0)
        for o in scene.objects
    ]
    return sorted(found, key=lambda d: -d.area)


def _find(detections: Sequence[Detection], obj: SceneObject, by_shape: bool = True) -> Detection | None:
    """The largest detection with the object's colour and shape (or colour alone), if any."""
    matches = [d for d in detections if d.colour == obj.colour and (d.shape == obj.shape or not by_shape)]
    return max(matches, key=lambda d: d.area, default=None)


def _relation_seen(subject: Detection, relation: str, obj: Detection) -> bool:
    """Whether the detected centres show `subject relation obj`: on the right side along the axis that dominates."""
    dx, dy = obj.x - subject.x, obj.y - subject.y  # y grows downwards
    if relation == "left of":
        return dx > 0 and abs(dy) < abs(dx)
    if relation == "right of":
        return dx < 0 and abs(dy) < abs(dx)
    if relation == "above":
        return dy > 0 and abs(dx) < abs(dy)
    return dy < 0 and abs(dx) < abs(dy)  # below


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def relation_outcome(detections: Sequence[Detection], scene: Scene | str | Mapping, match: str = "object") -> str:
    """Where a spatial scene's position claim went: 'missing' (a named object not found), 'correct', 'reversed'
    (the opposite relation holds) or 'perpendicular'. With both objects found and the relation ignored, 'correct'
    holds about a quarter of the time.

    match='colour' finds each object by its colour alone (a spatial scene's two colours differ): a diagnostic of
    whether the layout follows the relation words before shapes are learned, not the scorer's position claim.
    """
    if match not in ("object", "colour"):
        raise ValueError(f"match must be 'object' or 'colour', got {match!r}")
    scene = _as_scene(scene)
    if scene.kind != "spatial":
        raise ValueError(f"relation_outcome needs a spatial scene, got kind {scene.kind!r}")
    s, rel, o = scene.relations[0]
    by_shape = match == "object"
    subject, obj = _find(detections, scene.objects[s], by_shape), _find(detections, scene.objects[o], by_shape)
    if subject is None or obj is None:
        return "missing"
    if _relation_seen(subject, rel, obj):
        return "correct"
    return "reversed" if _relation_seen(subject, OPPOSITE[rel], obj) else "perpendicular"


def _name(o: SceneObject) -> str:
    return f"{o.colour} {o.shape}"


def check_detections(detections: Sequence[Detection], scene: Scene | str | Mapping) -> list[Check]:
    """Every claim of the scene's spec, tested on the objects detected in an image (per-check results).

    single -> colour: an object of the named colour and shape. counting -> counting: exactly n objects of the named
    colour and shape. binding -> binding: each named object present with its own colour on its own shape. spatial
    -> position: both named objects present, and the relation holds between the centres of the largest of each.
    """
    scene = _as_scene(scene)
    category = KIND_CATEGORY[scene.kind]
    if scene.kind == "counting":  # one check per object type: exactly that many of it
        wanted: dict[tuple[str, str], int] = {}
        for o in scene.objects:
            wanted[(o.colour, o.shape)] = wanted.get((o.colour, o.shape), 0) + 1
        seen = [(d.colour, d.shape) for d in detections]
        return [Check(category, f"{n} x {c} {s}", seen.count((c, s)) == n) for (c, s), n in wanted.items()]
    checks = [Check(category, f"a {_name(o)}", _find(detections, o) is not None) for o in scene.objects]
    for s, rel, o in scene.relations:
        subject, obj = _find(detections, scene.objects[s]), _find(detections, scene.objects[o])
        holds = subject is not None and obj is not None and _relation_seen(subject, rel, obj)
        checks.append(Check(category, f"{_name(scene.objects[s])} {rel} {_name(scene.objects[o])}", holds))
    return checks


def check_scene(image: np.ndarray, scene: Scene | str | Mapping) -> list[Check]:
    """Every claim of the scene's spec, tested on a uint8 [H, W, 3] image (per-check results)."""
    scene = _as_scene(scene)  # validate the spec before the work of detection
    return check_detections(detect_objects(image), scene)


def score_scene(image: np.ndarray, scene: Scene | str | Mapping) -> dict[str, bool]:
    """Per-image result for each category the scene's spec has claims in: True when all of them hold."""
    return _fold(check_scene(image, scene))


def _fold(checks: Sequence[Check]) -> dict[str, bool]:
    """Per-check results -> per-category, per-image results (all claims of a category hold)."""
    result: dict[str, bool] = {}
    for c in checks:
        result[c.category] = result.get(c.category, True) and c.passed
    return result


def summarise(checks_per_image: Sequence[Sequence[Check]]) -> dict[str, float]:
    """Accuracies of per-image check lists; the keys are those of `score_batch`."""
    per_image: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    per_check: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for checks in checks_per_image:
        for c in checks:
            per_check[c.category].append(c.passed)
        for category, ok in _fold(checks).items():
            per_image[category].append(ok)
    result: dict[str, float] = {c: float(np.mean(per_image[c])) for c in CATEGORIES if per_image[c]}
    result["overall"] = float(np.mean([all(c.passed for c in checks) for checks in checks_per_image]))
    result.update({f"{c}_checks": float(np.mean(per_check[c])) for c in CATEGORIES if per_check[c]})
    result.update({f"n_{c}": len(per_image[c]) for c in CATEGORIES})
    result.update({f"n_checks_{c}": len(per_check[c]) for c in CATEGORIES})
    result["n_images"] = len(checks_per_image)
    return result


def score_batch(images: np.ndarray | Sequence[np.ndarray], scenes: Sequence[Scene | str | Mapping]) -> dict[str, float]:
    """Accuracy of uint8 images [B, H, W, 3] against their scene specs (Scene, its JSON, or the parsed JSON).

    Keys: each category with images in it (per-image accuracy: all of the image's claims in it hold), `overall`
    (per-image: all claims hold), `<category>_checks` (per-claim accuracy), and the counts `n_<category>` (images),
    `n_checks_<category>` (claims) and `n_images`.
    """
    if isinstance(images, np.ndarray) and (images.ndim != 4 or images.shape[-1] != 3):
        raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
    if len(images) != len(scenes) or len(scenes) == 0:
        raise ValueError(f"need one scene per image, got {len(images)} images and {len(scenes)} scenes")
    specs = [_as_scene(s) for s in scenes]  # fail on a bad spec before scoring anything
    return summarise([check_scene(image, scene) for image, scene in zip(images, specs, strict=True)])
