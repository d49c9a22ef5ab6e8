import numpy as np
import pytest

from imagen_lit.data import COLOURS, render_scene, synthetic_scene
from imagen_lit.eval.colour import colour_accuracy, dominant_colour


def single_object_renders(resolution: int, n: int = 400):
    scenes = [s for s in (synthetic_scene(11, i) for i in range(n * 4)) if s.kind == "single"][:n]
    images = np.stack([np.asarray(render_scene(s, resolution)) for s in scenes])
    return images, [s.objects[0].colour for s in scenes]


@pytest.mark.parametrize("resolution", [32, 64])
def test_agrees_with_ground_truth_on_renders(resolution):
    images, colours = single_object_renders(resolution)
    assert len(colours) >= 300
    assert colour_accuracy(images, colours) >= 0.98


def test_does_not_say_yes_to_everything():
    images, colours = single_object_renders(32, 200)
    rng = np.random.default_rng(0)
    wrong = [rng.choice([c for c in COLOURS if c != true]) for true in colours]
    assert colour_accuracy(images, wrong) <= 0.02
    noise = rng.integers(0, 256, size=(200, 32, 32, 3), dtype=np.uint8)
    assert colour_accuracy(noise, colours) < 0.25  # chance is 1/8
    blank = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    assert all(dominant_colour(b) is None for b in blank)


def test_bad_input():
    with pytest.raises(ValueError, match="one colour per image"):
        colour_accuracy(np.zeros((2, 8, 8, 3), np.uint8), ["red"])
    with pytest.raises(ValueError, match="unknown colours"):
        colour_accuracy(np.zeros((1, 8, 8, 3), np.uint8), ["magenta"])
    with pytest.raises(ValueError, match="H, W, 3"):
        dominant_colour(np.zeros((8, 8), np.uint8))
