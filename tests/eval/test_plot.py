"""imagen_lit.eval.plot: every point's label stays inside the frame."""

from __future__ import annotations

import numpy as np

from imagen_lit.eval.plot import draw_curves


def test_a_long_label_at_the_right_edge_stays_inside_the_frame():
    curves = {"study": [("short", 0.0, 0.1, 0.05, 0.15), ("separate_cross_attention", 3.0, 0.2, 0.15, 0.25)]}
    image = draw_curves(curves, "order", "alignment/overall", "t", size=(900, 640))
    right, top, bottom = 30, 50, 60  # the frame's margins in draw_curves (tick labels sit below the frame)
    margin = image[top : 640 - bottom, 900 - right + 1 :]
    assert (margin == 255).all(), "a label ran past the frame into the right margin"
    assert image.shape == (640, 900, 3) and image.dtype == np.uint8
