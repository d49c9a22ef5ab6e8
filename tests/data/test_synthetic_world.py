"""The synthetic world: determinism, captions true to their specs, colour fidelity of the renderer."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from imagen_lit.data import COLOURS, SHAPES, Scene, SceneObject, render_scene, sample_scene, synthetic_scene
from imagen_lit.data.world import BACKGROUND, SIZES

COUNT = {2: "two", 3: "three", 4: "four"}
RELATION_WORDS = {"left of": {"left"}, "right of": {"right"}, "above": {"above", "over"},
                  "below": {"below", "under", "beneath"}}
ALL_RELATION_WORDS = set().union(*RELATION_WORDS.values())


def _png(scene: Scene, resolution: int) -> bytes:
    return np.asarray(render_scene(scene, resolution)).tobytes()


def test_same_seed_same_scenes_and_renders():
    for i in range(20):
        a, b = synthetic_scene(0, i), synthetic_scene(0, i)
        assert a.to_json() == b.to_json() and a.caption == b.caption
        assert _png(a, 32) == _png(b, 32)
    other = [synthetic_scene(1, i).to_json() for i in range(20)]
    assert sum(o != synthetic_scene(0, i).to_json() for i, o in enumerate(other)) >= 18


def test_renders_any_resolution():
    scene = synthetic_scene(0, 3)
    for res in (17, 32, 64):
        image = render_scene(scene, res)
        assert image.size == (res, res) and image.mode == "RGB"
    with pytest.raises(ValueError, match="resolution"):
        render_scene(scene, 0)


def test_json_round_trip_keeps_spec_and_render():
    for i in range(30):
        scene = synthetic_scene(7, i)
        again = Scene.from_json(scene.to_json())
        assert again == scene
        assert _png(again, 32) == _png(scene, 32)


def test_kinds_mix_and_layout_rules():
    scenes = [synthetic_scene(0, i) for i in range(2000)]
    kinds = Counter(s.kind for s in scenes)
    assert 0.3 < kinds["single"] / len(scenes) < 0.4
    assert set(kinds) == {"single", "counting", "binding", "spatial"}
    for s in scenes:
        assert s.background == BACKGROUND
        for o in s.objects:
            half = SIZES[o.size] / 2
            assert half <= o.x <= 1 - half and half <= o.y <= 1 - half  # inside the frame
        for a in range(len(s.objects)):
            for b in range(a + 1, len(s.objects)):
                oa, ob = s.objects[a], s.objects[b]
                distance = math.hypot(oa.x - ob.x, oa.y - ob.y)
                assert distance >= 0.5 * (oa.extent + ob.extent)  # no real overlap


def _phrase_index(words: list[str], colour: str, shape: str) -> int:
    """Index of 'colour shape(s)' in the caption words, or -1."""
    for i in range(len(words) - 1):
        if words[i] == colour and words[i + 1] in (shape, shape + "s"):
            return i
    return -1


def _holds(subject: SceneObject, relation: str, obj: SceneObject) -> bool:
    """Independent check: the bounding boxes are separated along the relation's axis."""
    hs, ho = subject.extent / 2, obj.extent / 2
    return {"left of": subject.x + hs < obj.x - ho, "right of": subject.x - hs > obj.x + ho,
            "above": subject.y + hs < obj.y - ho, "below": subject.y - hs > obj.y + ho}[relation]


@pytest.mark.parametrize("seed", [0, 1])
def test_captions_are_true_to_specs(seed):
    for i in range(1500):
        s = synthetic_scene(seed, i)
        words = s.caption.split()
        n = len(s.objects)
        # every object's colour+shape is named as a bound phrase; nothing absent is named
        for o in s.objects:
            at = _phrase_index(words, o.colour, o.shape)
            assert at >= 0, (s.caption, s.objects)
            if at > 0 and words[at - 1] in SIZES:
                assert words[at - 1] == o.size, (s.caption, o)
        assert {w for w in words if w in COLOURS} == {o.colour for o in s.objects}, s.caption
        assert {w.rstrip("s") for w in words if w.rstrip("s") in SHAPES} == {o.shape for o in s.objects}
        count_words = {w for w in words if w in COUNT.values()}
        if s.kind == "single":
            assert n == 1 and not count_words and s.relations == []
        elif s.kind == "counting":
            assert 2 <= n <= 4 and count_words == {COUNT[n]}, s.caption
            assert len({(o.shape, o.colour) for o in s.objects}) == 1
        elif s.kind == "binding":
            assert n == 2 and s.relations == [] and not (ALL_RELATION_WORDS & set(words))
            assert s.objects[0].colour != s.objects[1].colour and s.objects[0].shape != s.objects[1].shape
        else:
            assert s.kind == "spatial" and n == 2 and len(s.relations) == 1
            sub, rel, obj = s.relations[0]
            assert RELATION_WORDS[rel] & set(words), s.caption
            assert not (ALL_RELATION_WORDS - RELATION_WORDS[rel]) & set(words), s.caption
            a, b = s.objects[sub], s.objects[obj]
            assert _phrase_index(words, a.colour, a.shape) < _phrase_index(words, b.colour, b.shape)
            assert _holds(a, rel, b), (s.caption, s.objects)


def _foreground_mean(image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)
    fg = np.abs(pixels - np.array(BACKGROUND)).sum(axis=1) > 40  # clearly not background
    assert fg.sum() > 4
    return pixels[fg].mean(axis=0)


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(((np.array(COLOURS[c]) - rgb) ** 2).sum()))


@pytest.mark.parametrize("resolution", [32, 64])
def test_single_object_colour_fidelity(resolution):
    for colour in COLOURS:
        for shape in SHAPES:
            for size in SIZES:
                scene = Scene([SceneObject(shape, colour, size, 0.5, 0.5)], kind="single")
                assert _nearest_colour(_foreground_mean(render_scene(scene, resolution))) == colour
    sampled = [s for s in (sample_scene(random.Random(i)) for i in range(300)) if s.kind == "single"]
    for s in sampled:
        mean = _foreground_mean(render_scene(s, resolution))
        assert _nearest_colour(mean) == s.objects[0].colour, s.caption


def test_kind_weights_change_the_training_mix_only():
    """kinds picks the training mix of scene kinds; the default stays the world's (what held-out scenes use)."""
    from imagen_lit.data.world import KINDS, check_kinds

    spatial = [synthetic_scene(0, i, {"spatial": 1.0}) for i in range(40)]
    assert {s.kind for s in spatial} == {"spatial"}
    assert all(len(s.relations) == 1 for s in spatial)
    mixed = Counter(synthetic_scene(0, i, {"single": 1, "spatial": 3}).kind for i in range(2000))
    assert set(mixed) == {"single", "spatial"} and 0.7 < mixed["spatial"] / 2000 < 0.8
    assert [synthetic_scene(0, i).to_json() for i in range(10)] == \
        [synthetic_scene(0, i, dict(KINDS)).to_json() for i in range(10)]
    for bad in ({"spatial": -1.0}, {"relations": 1.0}, {}, {"single": 0.0}):
        with pytest.raises(ValueError, match="scene kinds must map some of"):
            check_kinds(bad)
