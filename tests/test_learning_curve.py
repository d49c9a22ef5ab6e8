"""experiments/learning_curve.py on a tiny train.py run: one scored row per step checkpoint, minutes increasing."""

import json
from pathlib import Path

import pytest

from experiments.learning_curve import main
from imagen_lit.eval.curves import step_checkpoints
from train import train


def test_learning_curve_scores_every_step_checkpoint(train_cfg, tmp_path, monkeypatch):
    train(train_cfg)
    run = Path(train_cfg.paths.output_dir)
    assert [s for s, _ in step_checkpoints(run)] == [2, 4]
    out = tmp_path / "curve.json"
    monkeypatch.setattr("sys.argv", ["learning_curve.py", f"tiny={run}", "--num-scenes", "3", "--batch-size", "3",
                                     "--json", str(out), "--png", str(tmp_path / "curve.png")])
    main()
    rows = json.loads(out.read_text())["tiny"]
    assert [r["step"] for r in rows] == [2, 4] and rows[0]["minutes"] <= rows[1]["minutes"]
    assert all(0 <= r["overall_lo"] <= r["overall"] <= r["overall_hi"] <= 1 and r["n_images"] == 3 for r in rows)
    assert (tmp_path / "curve.png").stat().st_size > 0
    # Saved curves are re-plotted with new runs, or alone, without scoring them again.
    monkeypatch.setattr("sys.argv", ["learning_curve.py", "--saved", str(out), "--png", str(tmp_path / "again.png")])
    main()
    assert (tmp_path / "again.png").stat().st_size > 0


def test_a_folder_without_step_checkpoints_is_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no step_\\*.ckpt under"):
        step_checkpoints(tmp_path)
