"""experiments/relation_likelihood.py: the counterfactual captions differ from the truth in the tested words only."""

from __future__ import annotations

from experiments.relation_likelihood import OPPOSITE, counterfactuals
from imagen_lit.eval.guidance import heldout_scenes


def test_counterfactuals_change_only_the_tested_words():
    scenes = [s for s in heldout_scenes(200, 2000) if s.kind == "spatial"][:20]
    assert len(scenes) >= 10
    for scene in scenes:
        caps = counterfactuals(scene)
        a, b = scene.objects[:2]
        relation = scene.relations[0][1]
        assert caps["true"].startswith(("a ", "an ")) and f"{a.colour} {a.shape}" in caps["true"]
        assert caps["true"].endswith(f"{b.colour} {b.shape}")
        assert caps["relation"] == caps["true"].replace(relation, OPPOSITE[relation]) or \
            OPPOSITE[relation] in caps["relation"]
        assert caps["relation"].split()[:3] == caps["true"].split()[:3]
        assert f"{b.colour} {a.shape}" in caps["colours"] and f"{a.colour} {b.shape}" in caps["colours"]
        assert f"{a.colour} {b.shape}" in caps["shapes"] and f"{b.colour} {a.shape}" in caps["shapes"]
        absent = caps["absent"].split()[1]
        assert absent not in (a.colour, b.colour) and caps["absent"].endswith(f"{b.colour} {b.shape}")
        assert len(set(caps.values())) == 5
