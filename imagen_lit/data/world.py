"""A small compositional world: coloured shapes on grey, with captions that are always true."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field

# Eight colours far apart in RGB (min pairwise distance ~80) and from the grey background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")
SIZES: dict[str, float] = {"small": 0.24, "large": 0.4}  # object extent as a fraction of the image side
BACKGROUND: tuple[int, int, int] = (128, 128, 128)
KINDS: dict[str, float] = {"single": 0.35, "counting": 0.25, "binding": 0.2, "spatial": 0.2}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}

EDGE = 0.02  # gap between an object and the frame, as a fraction of the image side
SPATIAL_MARGIN = 0.05  # spatial pairs are this much further apart than touching along the relation's axis


@dataclass
class SceneObject:
    """One shape: its colour, size word, extent (fraction of the side) and centre in [0, 1] (y down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    @property
    def extent(self) -> float:
        """Diameter of the object's bounding circle as a fraction of the image side."""
        return SIZES[self.size]


@dataclass
class Scene:
    """A scene spec: objects, relations (subject index, relation, object index), kind and caption."""

    objects: list[SceneObject]
    kind: str
    caption: str = ""
    relations: list[tuple[int, str, int]] = field(default_factory=list)
    background: tuple[int, int, int] = BACKGROUND

    def to_json(self) -> str:
        """The spec as a JSON string (objects carry their extent for the evaluator)."""
        objects = [{**asdict(o), "extent": o.extent} for o in self.objects]
        return json.dumps(
            {
                "kind": self.kind,
                "caption": self.caption,
                "objects": objects,
                "relations": [list(r) for r in self.relations],
                "background": list(self.background),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Scene:
        """Parse a spec written by `to_json`."""
        d = json.loads(text)
        objects = [SceneObject(o["shape"], o["colour"], o["size"], o["x"], o["y"]) for o in d["objects"]]
        return cls(
            objects=objects,
            kind=d["kind"],
            caption=d["caption"],
            relations=[(int(s), str(r), int(o)) for s, r, o in d["relations"]],
            background=tuple(d["background"]),
        )


def relation_holds(subject: SceneObject, relation: str, obj: SceneObject, margin: float = 0.0) -> bool:
    """Whether `subject relation obj` is true: clear along the axis, and that axis dominates."""
    dx, dy = obj.x - subject.x, obj.y - subject.y  # y grows downwards
    gap = (subject.extent + obj.extent) / 2 + margin
    if relation == "left of":
        return dx >= gap and abs(dy) < abs(dx)
    if relation == "right of":
        return -dx >= gap and abs(dy) < abs(dx)
    if relation == "above":
        return dy >= gap and abs(dx) < abs(dy)
    if relation == "below":
        return -dy >= gap and abs(dx) < abs(dy)
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def sample_scene(rng: random.Random, kinds: dict[str, float] | None = None) -> Scene:
    """Sample a scene and a true caption for it; deterministic given the rng's state.

    kinds: weights of the scene kinds (default KINDS, the held-out world's mix); a training set may draw another.
    """
    kinds = KINDS if kinds is None else check_kinds(kinds)
    kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    while True:  # rejection sampling: retry the whole layout when objects can't be placed
        scene = _sample_layout(rng, kind)
        if scene is not None:
            break
    scene.caption = make_caption(scene, rng)
    return scene


def check_kinds(kinds: dict[str, float]) -> dict[str, float]:
    """The kind weights as floats, or a one-line error naming the known kinds."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds or any(float(w) < 0 for w in kinds.values()) or sum(map(float, kinds.values())) <= 0:
        raise ValueError(f"scene kinds must map some of {tuple(KINDS)} to weights >= 0 with a positive sum, got "
                         f"{dict(kinds)}")
    return {k: float(kinds[k]) for k in KINDS if k in kinds}


def _sample_layout(rng: random.Random, kind: str) -> Scene | None:
    if kind == "single":
        specs = [(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)))]
    elif kind == "counting":
        n = rng.randint(2, 4)
        size = rng.choice(list(SIZES)) if n == 2 else "small"
        specs = [(rng.choice(SHAPES), rng.choice(list(COLOURS)), size)] * n
    elif kind in ("binding", "spatial"):
        shapes, colours = rng.sample(SHAPES, 2), rng.sample(list(COLOURS), 2)  # differ in shape and colour
        specs = [(shapes[i], colours[i], rng.choice(list(SIZES))) for i in range(2)]
    else:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {tuple(KINDS)}")
    relation = rng.choice(RELATIONS) if kind == "spatial" else None

    objects: list[SceneObject] = []
    for shape, colour, size in specs:
        for _ in range(200):
            lo, hi = SIZES[size] / 2 + EDGE, 1 - SIZES[size] / 2 - EDGE  # keeps the object inside the frame
            x, y = round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4)
            cand = SceneObject(shape, colour, size, x, y)
            if not all(_apart(cand, o) for o in objects):
                continue
            if relation and objects and not relation_holds(objects[0], relation, cand, SPATIAL_MARGIN):
                continue
            objects.append(cand)
            break
        else:
            return None
    relations = [(0, relation, 1)] if relation else []
    return Scene(objects=objects, kind=kind, relations=relations)


def _apart(a: SceneObject, b: SceneObject) -> bool:
    """Bounding circles (slightly padded) do not intersect, so shapes barely touch at most."""
    return math.hypot(a.x - b.x, a.y - b.y) >= 0.55 * (a.extent + b.extent) + 0.01


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(o: SceneObject, rng: random.Random, plural: bool = False) -> str:
    """'blue star', or 'large blue star' half the time."""
    words = ([o.size] if rng.random() < 0.5 else []) + [o.colour, o.shape + ("s" if plural else "")]
    return " ".join(words)


SINGLE = ("{a}", "{a}", "a photo of {a}", "one {n}", "{a} on a grey background", "an image of {a}")
COUNTING = ("{c} {n}", "a photo of {c} {n}", "exactly {c} {n}", "{c} {n} on a grey background")
BINDING = ("{a} and {b}", "a photo of {a} and {b}", "{a} together with {b}", "an image with {a} and {b}")
SPATIAL = {
    "left of": ("{a} to the left of {b}", "{a} left of {b}", "{a} on the left of {b}"),
    "right of": ("{a} to the right of {b}", "{a} right of {b}", "{a} on the right of {b}"),
    "above": ("{a} above {b}", "{a} over {b}", "{a} is above {b}"),
    "below": ("{a} below {b}", "{a} under {b}", "{a} beneath {b}"),
}


def make_caption(scene: Scene, rng: random.Random) -> str:
    """A caption for the scene drawn from several phrasings; every word of it is true."""
    objs = scene.objects
    if scene.kind == "single":
        n = _noun(objs[0], rng)
        return rng.choice(SINGLE).format(a=_article(n), n=n)
    if scene.kind == "counting":
        return rng.choice(COUNTING).format(c=COUNT_WORDS[len(objs)], n=_noun(objs[0], rng, plural=True))
    a, b = _article(_noun(objs[0], rng)), _article(_noun(objs[1], rng))
    if scene.kind == "binding":
        if rng.random() < 0.5:
            a, b = b, a  # "and" is symmetric: mention either object first
        return rng.choice(BINDING).format(a=a, b=b)
    _, relation, _ = scene.relations[0]  # always (0, relation, 1): the first object is the subject
    return rng.choice(SPATIAL[relation]).format(a=a, b=b)
