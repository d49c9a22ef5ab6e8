"""Paraphrased captions keep the scene's spec and its colour/shape/count words, and are never a training template."""

import random

from imagen_lit.data.world import COUNT_WORDS
from imagen_lit.eval.compositional import check_detections, scene_detections
from imagen_lit.eval.guidance import heldout_scenes
from imagen_lit.eval.paraphrase import paraphrase


def test_paraphrases_keep_the_spec_and_name_every_object():
    rng = random.Random(0)
    scenes = heldout_scenes(60, 2000)
    for scene in scenes:
        new = paraphrase(scene, rng)
        assert new.objects == scene.objects and new.relations == scene.relations and new.kind == scene.kind
        assert new.caption != scene.caption
        for o in scene.objects:
            assert o.colour in new.caption and o.shape in new.caption
        if scene.kind == "counting":
            assert COUNT_WORDS[len(scene.objects)] in new.caption
        # the scorer reads the spec, not the words: a true render still passes every claim
        assert all(c.passed for c in check_detections(scene_detections(new), new))
