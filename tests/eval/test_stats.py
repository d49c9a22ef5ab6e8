"""Wilson intervals (hand-computed values), chance levels (a caption-ignoring image is near 0), the table rows."""

import pytest

from imagen_lit.eval.guidance import heldout_scenes
from imagen_lit.eval.stats import chance_levels, wilson_interval, with_intervals


def test_wilson_interval_matches_hand_computed_values():
    # p = 0.3, n = 100, z = 1.96: centre (0.3 + 0.019208) / 1.038416,
    # half-width 1.96 sqrt(0.0021 + 0.00009604) / 1.038416
    lo, hi = wilson_interval(30, 100)
    assert lo == pytest.approx(0.2189, abs=1e-4) and hi == pytest.approx(0.3958, abs=1e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and 0.05 < wilson_interval(0, 50)[1] < 0.08  # never [0, 0]
    assert wilson_interval(50, 50)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(5, 4)


def test_chance_levels_of_the_world_are_low_and_cover_every_category():
    chance = chance_levels(heldout_scenes(200, 2000))
    for category in ("colour", "counting", "position", "binding", "overall"):
        assert 0.0 <= chance[category] < 0.1, category  # an image of another scene rarely satisfies the caption


def test_with_intervals_reads_score_batch_keys():
    metrics = {"colour": 0.5, "n_colour": 10, "overall": 0.25, "n_images": 40}
    rows = with_intervals(metrics, chance={"colour": 0.02})
    assert rows["colour"]["n"] == 10 and rows["colour"]["chance"] == 0.02
    assert rows["overall"]["lo"] < 0.25 < rows["overall"]["hi"] and "counting" not in rows
