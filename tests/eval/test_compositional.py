import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from imagen_lit.data import render_scene, synthetic_scene
from imagen_lit.data.world import COLOURS, SHAPES, Scene, SceneObject
from imagen_lit.eval.compositional import (
    CATEGORIES,
    check_detections,
    check_scene,
    detect_objects,
    relation_outcome,
    scene_detections,
    score_batch,
    score_scene,
    summarise,
)

SEED = 777  # held out: training data uses seed 0


def held_out(n: int, resolution: int) -> tuple[np.ndarray, list[Scene]]:
    scenes = [synthetic_scene(SEED, i) for i in range(n)]
    return np.stack([np.asarray(render_scene(s, resolution)) for s in scenes]), scenes


@pytest.fixture(scope="module")
def renders32():
    return held_out(100, 32)


def first_of_kind(kind: str) -> Scene:
    return next(s for s in (synthetic_scene(SEED, i) for i in range(1000)) if s.kind == kind)


def test_detects_what_was_drawn():
    for i in range(10):
        scene = synthetic_scene(SEED, i)
        found = detect_objects(np.asarray(render_scene(scene, 32)))
        assert len(found) == len(scene.objects)
        for o in scene.objects:  # each object: one detection at its place, with its colour, shape and size
            d = min(found, key=lambda d: (d.x - o.x) ** 2 + (d.y - o.y) ** 2)
            assert (d.colour, d.shape) == (o.colour, o.shape)
            assert abs(d.x - o.x) < 0.02 and abs(d.y - o.y) < 0.02 and abs(d.extent - o.extent) < 0.03
    assert detect_objects(np.full((32, 32, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("resolution, n", [(32, 100), (64, 40)])
def test_real_renders_pass(resolution, n, renders32):
    images, scenes = renders32 if resolution == 32 else held_out(n, resolution)
    result = score_batch(images, scenes)
    assert result["n_images"] == n and all(result[f"n_{c}"] >= 4 for c in CATEGORIES)
    for c in (*CATEGORIES, "overall"):
        assert result[c] >= 0.95, (c, result)


def test_noise_and_shuffled_specs_fail(renders32):
    images, scenes = renders32
    noise = np.random.default_rng(0).integers(0, 256, size=images.shape, dtype=np.uint8)
    result = score_batch(noise, scenes)
    assert all(result[c] <= 0.05 for c in (*CATEGORIES, "overall")), result

    shuffled = scenes[1:] + scenes[:1]  # every image with another scene's spec
    result = score_batch(images, shuffled)
    assert result["overall"] <= 0.1 and all(result[c] <= 0.15 for c in CATEGORIES), result
    # ... which is what an oracle that knows the true objects says about these pairs (the chance level)
    chance = summarise([check_detections(scene_detections(t), s) for t, s in zip(scenes, shuffled, strict=True)])
    assert abs(result["overall"] - chance["overall"]) <= 0.03


def test_tolerates_blur_colour_drift_and_noise(renders32):
    images, scenes = renders32
    rng = np.random.default_rng(1)
    x = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, 0.5, 0.5, 0))
    x += rng.uniform(-15, 15, size=(len(x), 1, 1, 3)) + rng.normal(0, 6, size=x.shape)
    result = score_batch(np.clip(np.round(x), 0, 255).astype(np.uint8), scenes)
    assert result["overall"] >= 0.9, result


def edit(scene: Scene, indices=(0,), **changes) -> Scene:
    objects = [dataclasses.replace(o, **changes) if i in indices else o for i, o in enumerate(scene.objects)]
    return dataclasses.replace(scene, objects=objects)


@pytest.mark.parametrize("kind", ["single", "counting", "binding", "spatial"])
def test_a_wrong_colour_or_shape_flips_the_check(kind):
    scene = first_of_kind(kind)
    image = np.asarray(render_scene(scene, 32))
    category = {"single": "colour", "counting": "counting", "binding": "binding", "spatial": "position"}[kind]
    assert score_scene(image, scene) == {category: True}
    edited = range(len(scene.objects)) if kind == "counting" else (0,)  # counted objects share colour and shape
    colour = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
    shape = next(s for s in SHAPES if s not in {o.shape for o in scene.objects})
    assert score_scene(image, edit(scene, edited, colour=colour)) == {category: False}
    assert score_scene(image, edit(scene, edited, shape=shape)) == {category: False}


def test_binding_swap_fails():
    scene = first_of_kind("binding")
    a, b = scene.objects
    image = np.asarray(render_scene(scene, 32))
    swapped = edit(edit(scene, (0,), colour=b.colour), (1,), colour=a.colour)
    assert score_scene(image, swapped) == {"binding": False}  # right colours and shapes, wrongly paired
    checks = check_scene(image, edit(scene, (1,), colour=a.colour))
    assert [c.passed for c in checks] == [True, False]  # per-check: only the edited object fails


def test_a_wrong_count_flips_the_check():
    scene = next(
        s for s in (synthetic_scene(SEED, i) for i in range(1000)) if s.kind == "counting" and len(s.objects) == 3
    )
    image = np.asarray(render_scene(scene, 32))
    assert score_scene(image, scene) == {"counting": True}
    for n in (2, 4):
        extra = [SceneObject(**{**dataclasses.asdict(scene.objects[0]), "x": 0.5, "y": 0.5})]
        wrong = dataclasses.replace(scene, objects=scene.objects[:n] + extra * (n - 3))
        assert len(wrong.objects) == n
        assert score_scene(image, wrong) == {"counting": False}


def test_a_wrong_relation_flips_the_check():
    scene = first_of_kind("spatial")
    image = np.asarray(render_scene(scene, 32))
    s, rel, o = scene.relations[0]
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    perpendicular = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}
    assert [c.passed for c in check_scene(image, scene)] == [True, True, True]
    for wrong in (opposite[rel], perpendicular[rel]):
        checks = check_scene(image, dataclasses.replace(scene, relations=[(s, wrong, o)]))
        assert [c.passed for c in checks] == [True, True, False]  # both objects seen, the relation is not
    assert score_scene(image, dataclasses.replace(scene, relations=[(o, rel, s)])) == {"position": False}


def test_relation_outcome_names_where_the_claim_went():
    scene = first_of_kind("spatial")
    found = detect_objects(np.asarray(render_scene(scene, 32)))
    s, rel, o = scene.relations[0]
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    perpendicular = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}
    assert relation_outcome(found, scene) == "correct"
    for claimed, outcome in ((opposite[rel], "reversed"), (perpendicular[rel], "perpendicular")):
        assert relation_outcome(found, dataclasses.replace(scene, relations=[(s, claimed, o)])) == outcome
    other = next(c for c in COLOURS if c not in {ob.colour for ob in scene.objects})
    unseen = [dataclasses.replace(scene.objects[0], colour=other), scene.objects[1]]
    assert relation_outcome(found, dataclasses.replace(scene, objects=unseen)) == "missing"
    with pytest.raises(ValueError, match="needs a spatial scene"):
        relation_outcome(found, first_of_kind("binding"))


def test_colour_match_ignores_shapes_only():
    """match='colour' finds a spatial scene's objects by colour alone: a wrong shape still counts, a missing colour
    does not, and the relation is judged as with match='object'."""
    scene = first_of_kind("spatial")
    found = detect_objects(np.asarray(render_scene(scene, 32)))
    s, rel, o = scene.relations[0]
    other_shape = next(sh for sh in SHAPES if sh not in {ob.shape for ob in scene.objects})
    misshapen = [dataclasses.replace(scene.objects[0], shape=other_shape), scene.objects[1]]
    assert relation_outcome(found, dataclasses.replace(scene, objects=misshapen)) == "missing"
    assert relation_outcome(found, dataclasses.replace(scene, objects=misshapen), match="colour") == "correct"
    reversed_claim = dataclasses.replace(scene, objects=misshapen, relations=[(o, rel, s)])
    assert relation_outcome(found, reversed_claim, match="colour") == "reversed"
    other = next(c for c in COLOURS if c not in {ob.colour for ob in scene.objects})
    uncoloured = [dataclasses.replace(scene.objects[0], colour=other), scene.objects[1]]
    assert relation_outcome(found, dataclasses.replace(scene, objects=uncoloured), match="colour") == "missing"
    with pytest.raises(ValueError, match="match must be 'object' or 'colour'"):
        relation_outcome(found, scene, match="shape")


def test_spec_as_json_or_dict():
    images, scenes = held_out(4, 32)
    expected = score_batch(images, scenes)
    assert score_batch(images, [s.to_json() for s in scenes]) == expected
    assert score_batch(list(images), [json.loads(s.to_json()) for s in scenes]) == expected


def test_bad_input():
    images, scenes = held_out(2, 32)
    with pytest.raises(ValueError, match="one scene per image"):
        score_batch(images, scenes[:1])
    with pytest.raises(ValueError, match="one scene per image"):
        score_batch(images[:0], [])
    with pytest.raises(ValueError, match=r"B, H, W, 3"):
        score_batch(images[0], scenes)
    with pytest.raises(ValueError, match=r"uint8 image \[H, W, 3\]"):
        detect_objects(images[0].astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"uint8 image \[H, W, 3\]"):
        detect_objects(images[0, :, :, 0])
    with pytest.raises(ValueError, match="too small"):
        detect_objects(images[0, :8, :8])
    with pytest.raises(ValueError, match="unknown colour or shape"):
        score_scene(images[0], edit(scenes[0], colour="magenta"))
    with pytest.raises(ValueError, match="unknown scene kind"):
        score_scene(images[0], dataclasses.replace(scenes[0], kind="negation"))
    with pytest.raises(ValueError, match="bad relation"):
        score_scene(images[0], dataclasses.replace(scenes[0], relations=[(0, "inside", 0)]))
    with pytest.raises(ValueError, match="not a scene spec"):
        score_scene(images[0], '{"kind": "single"}')
    with pytest.raises(ValueError):
        score_scene(images[0], "not json")
