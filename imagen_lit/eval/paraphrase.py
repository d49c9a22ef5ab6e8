"""Captions in words the world's templates never use (a user's own phrasing), for the same scene specs: the
compositional scorer then measures whether the model follows the meaning or only the training templates."""

from __future__ import annotations

import random
from dataclasses import replace

from imagen_lit.data.world import BINDING, COUNT_WORDS, COUNTING, SINGLE, SPATIAL, Scene, _article, _noun

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "single": ("a picture showing {a}", "there is {a} in this picture", "just {a}, nothing else"),
    "counting": ("a group of {c} {n}", "{c} {n} in total", "there are {c} {n} here"),
    "binding": ("{a} next to {b}", "both {a} and {b}", "{a} as well as {b}"),
    "left of": ("{a} placed to the left of {b}", "{a}, and {b} on its right", "on the left {a}, on the right {b}"),
    "right of": ("{a} placed to the right of {b}", "{a}, and {b} on its left", "on the right {a}, on the left {b}"),
    "above": ("{a} placed above {b}", "{a} at the top and {b} at the bottom", "{a} higher up than {b}"),
    "below": ("{a} placed below {b}", "{a} at the bottom and {b} at the top", "{a} lower down than {b}"),
}
_TEMPLATES = {*SINGLE, *COUNTING, *BINDING, *(t for ts in SPATIAL.values() for t in ts)}
if _TEMPLATES & {t for ts in PARAPHRASES.values() for t in ts}:
    raise ImportError("a paraphrase is one of the world's own caption templates")


def paraphrase(scene: Scene, rng: random.Random) -> Scene:
    """The same spec with a caption drawn from PARAPHRASES; every word of it is still true of the scene."""
    objs = scene.objects
    if scene.kind == "single":
        n = _noun(objs[0], rng)
        caption = rng.choice(PARAPHRASES["single"]).format(a=_article(n))
    elif scene.kind == "counting":
        caption = rng.choice(PARAPHRASES["counting"]).format(
            c=COUNT_WORDS[len(objs)], n=_noun(objs[0], rng, plural=True))
    else:
        a, b = _article(_noun(objs[0], rng)), _article(_noun(objs[1], rng))
        key = "binding" if scene.kind == "binding" else scene.relations[0][1]
        caption = rng.choice(PARAPHRASES[key]).format(a=a, b=b)
    return replace(scene, caption=caption)
