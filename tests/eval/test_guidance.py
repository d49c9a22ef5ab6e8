import numpy as np
import pytest
import torch

from imagen_lit.data.render import render_scene
from imagen_lit.eval.guidance import evaluate_images, heldout_scenes, pareto_rows


def as_tensor(images: list) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_renders_score_full_alignment_and_noise_does_not():
    scenes = heldout_scenes(40, seed=2000)
    renders = as_tensor([render_scene(s, 32) for s in scenes])
    real = evaluate_images(renders, scenes)
    assert real["alignment/overall"] == 1.0 and real["alignment/colour_named"] == 1.0
    noise = evaluate_images(torch.rand_like(renders) * 2 - 1, scenes)
    assert noise["alignment/overall"] < 0.1 and noise["alignment/colour_named"] < 0.5
    with pytest.raises(ValueError, match="num_images"):
        heldout_scenes(0, seed=1)


def test_pareto_rows_group_by_mode_and_skip_failed_jobs():
    rows = [{"status": "ok", "thresholding": m, "guidance_weight": w, "x": w * 2, "y": w / 10}
            for m in ("static", "dynamic") for w in (3.0, 1.0)]
    rows.append({"status": "failed", "thresholding": "static", "guidance_weight": 5.0})
    curves = pareto_rows(rows, "x", "y")
    assert list(curves) == ["dynamic", "static"]
    assert curves["static"] == [(1.0, 2.0, 0.1), (3.0, 6.0, 0.3)]  # sorted by weight, failed job left out
