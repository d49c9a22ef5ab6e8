import csv
import json

import numpy as np
import pytest
from PIL import Image

from imagen_lit.eval.side_by_side import ROW_PAD, SCALE, TEXT_WIDTH, build_sheets


def fake_run(path, colour, prompts, seed=0):
    records = []
    for i, (prompt, category) in enumerate(prompts):
        file = f"images/{i:05d}.png"
        (path / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(path / file)
        records.append({"file": file, "prompt": prompt, "index": 0, "category": category})
    (path / "samples.json").write_text(json.dumps({"seed": seed, "images": records}))
    return path


PROMPTS = [(f"prompt {i}", "Colors" if i < 6 else "Counting") for i in range(10)]


def test_sheets_pair_the_same_prompt_and_hide_the_sides(tmp_path):
    a = fake_run(tmp_path / "a", (255, 0, 0), PROMPTS)
    b = fake_run(tmp_path / "b", (0, 0, 255), PROMPTS)
    sheets = build_sheets(a, b, tmp_path / "ab")
    assert set(sheets) == {"Colors", "Counting"}
    key = json.loads((tmp_path / "ab" / "key.json").read_text())["rows"]
    assert {r["left"] for r in key} == {"A", "B"}  # both orders occur, so raters cannot learn the side
    with (tmp_path / "ab" / "ratings.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(PROMPTS)
    sheet = np.asarray(Image.open(sheets["Colors"]))
    side = 8 * SCALE
    for i, row in enumerate(r for r in key if r["row"].startswith("Colors/")):
        y = ROW_PAD + i * (side + ROW_PAD) + side // 2
        left_pixel = sheet[y, TEXT_WIDTH + ROW_PAD + side // 2]
        assert tuple(left_pixel) == ((255, 0, 0) if row["left"] == "A" else (0, 0, 255))


def test_runs_must_match(tmp_path):
    a = fake_run(tmp_path / "a", (255, 0, 0), PROMPTS)
    with pytest.raises(ValueError, match="different prompts"):
        build_sheets(a, fake_run(tmp_path / "b", (0, 0, 255), PROMPTS[:-1]), tmp_path / "ab")
    with pytest.raises(ValueError, match="different seeds"):
        build_sheets(a, fake_run(tmp_path / "c", (0, 0, 255), PROMPTS, seed=1), tmp_path / "ac")
    with pytest.raises(FileNotFoundError, match="samples.json"):
        build_sheets(a, tmp_path / "missing", tmp_path / "ad")
