"""Wilson intervals (hand-computed values), chance levels (a caption-ignoring image is near 0), the table rows."""

import math

import pytest
import torch

from imagen_lit.eval.guidance import heldout_scenes
from imagen_lit.eval.stats import (
    chance_levels,
    difference_interval,
    frechet_distance,
    homogeneity_p,
    paired_fid_difference,
    rank_test_p,
    wilson_interval,
    with_intervals,
)


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


def test_difference_interval_matches_newcombes_published_example():
    # Newcombe (1998), Stat. Med. 17:873, Table II example (a): 56/70 against 48/80, method 10 (hybrid score)
    d, lo, hi = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert difference_interval(48, 80, 56, 70) == pytest.approx((-0.2, -0.3339, -0.0524), abs=1e-4)  # antisymmetric


def test_homogeneity_p_matches_the_one_degree_closed_form():
    # 56/300 against 81/300: pooled 137/600, chi-square 5.912 on 1 dof, whose survival is erfc(sqrt(x / 2))
    x = 2 * 12.5**2 / 68.5 + 2 * 12.5**2 / 231.5
    assert homogeneity_p([(56, 300), (81, 300)]) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)
    assert homogeneity_p([(56, 300), (81, 300)]) == pytest.approx(0.0150, abs=1e-4)
    assert homogeneity_p([(60, 300), (60, 300), (60, 300)]) == pytest.approx(1.0)
    assert homogeneity_p([(60, 300)]) == 1.0
    # three groups, 2 dof: the survival is exp(-x / 2)
    x3 = sum((k - 100 * 0.3) ** 2 / (100 * 0.3 * 0.7) for k in (20, 30, 40))
    assert homogeneity_p([(20, 100), (30, 100), (40, 100)]) == pytest.approx(math.exp(-x3 / 2), rel=1e-9)


def test_chance_levels_of_the_world_are_low_and_cover_every_category():
    chance = chance_levels(heldout_scenes(200, 2000))
    for category in ("colour", "counting", "position", "binding", "overall"):
        assert 0.0 <= chance[category] < 0.1, category  # an image of another scene rarely satisfies the caption


def test_with_intervals_reads_score_batch_keys():
    metrics = {"colour": 0.5, "n_colour": 10, "overall": 0.25, "n_images": 40}
    rows = with_intervals(metrics, chance={"colour": 0.02})
    assert rows["colour"]["n"] == 10 and rows["colour"]["chance"] == 0.02
    assert rows["overall"]["lo"] < 0.25 < rows["overall"]["hi"] and "counting" not in rows


def test_frechet_distance_matches_torchmetrics_and_the_closed_form():
    """Our FID equals torchmetrics' on the same features, and |mu1 - mu2|^2 for two sets differing by a shift."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from imagen_lit.eval.fid import _Passthrough

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g).double(), torch.randn(400, 8, generator=g).double() * 1.5 + 0.3
    metric = FrechetInceptionDistance(feature=_Passthrough(8), reset_real_features=False)
    metric.update(b, real=True)
    metric.update(a, real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-4)
    assert frechet_distance(a + 2.0, a) == pytest.approx(8 * 4.0, rel=1e-6)


def test_paired_fid_difference_is_zero_for_the_same_set_and_positive_for_a_worse_one():
    g = torch.Generator().manual_seed(1)
    reference, baseline = torch.randn(500, 6, generator=g), torch.randn(120, 6, generator=g)
    assert paired_fid_difference(baseline, baseline, reference, 50) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_fid_difference(baseline + 0.5, baseline, reference, 100)
    assert 0 < lo < diff < hi
    with pytest.raises(ValueError, match="one row per scene in both"):
        paired_fid_difference(baseline[:10], baseline, reference)


def test_rank_test_p_counts_every_split_of_the_runs():
    """Three runs all above three: 1 of C(6, 3) = 20 splits; four against four with 14 of 16 pairs above: U >= 14 in
    4 of 70 splits (U = 16 and 15 once each, 14 twice); ties count half; no runs on a side is one line."""
    assert rank_test_p([3, 4, 5], [0, 1, 2]) == (9, pytest.approx(1 / 20))
    assert rank_test_p([0.303, 0.217, 0.320, 0.313], [0.187, 0.270, 0.220, 0.207]) == (14, pytest.approx(4 / 70))
    assert rank_test_p([0, 1, 2], [3, 4, 5]) == (0, pytest.approx(1.0))
    assert rank_test_p([1, 1], [1, 1]) == (2, pytest.approx(1.0))
    with pytest.raises(ValueError, match="needs runs on both sides"):
        rank_test_p([], [1])
