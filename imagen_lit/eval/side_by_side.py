"""DrawBench side-by-side sheets for the paper's human protocol (Imagen Sec. 4.3): two runs, same prompts and seeds.

    python sample.py ckpt_path=<run A> drawbench=all hydra.run.dir=out/a
    python sample.py ckpt_path=<run B> drawbench=all hydra.run.dir=out/b
    python -m imagen_lit.eval.side_by_side out/a out/b out/ab

Per category: <out>/sheets/<category>.png (one row per prompt and seed: caption, left image, right image), the
left/right order drawn at random per row so raters cannot tell the runs apart; <out>/ratings.csv to fill in with
left | indifferent | right; <out>/key.json, kept from raters, says which side was A.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

from PIL import Image, ImageDraw

ROW_PAD, TEXT_WIDTH, SCALE = 6, 360, 4


def _records(run_dir: Path) -> dict[tuple[str, int], dict]:
    meta_file = run_dir / "samples.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: run sample.py drawbench=... into {run_dir} first")
    meta = json.loads(meta_file.read_text())
    return {(r["prompt"], r["index"]): {**r, "path": run_dir / r["file"], "seed": meta["seed"]} for r in meta["images"]}


def build_sheets(run_a: str | Path, run_b: str | Path, out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write one side-by-side sheet per category, ratings.csv and key.json; return {category: sheet path}."""
    a, b = _records(Path(run_a)), _records(Path(run_b))
    if set(a) != set(b):
        raise ValueError(f"the runs sampled different prompts/indices ({len(set(a) ^ set(b))} differ): "
                         "sample both with the same drawbench selection and num_images")
    seeds = {r["seed"] for r in a.values()} | {r["seed"] for r in b.values()}
    if len(seeds) != 1:
        raise ValueError(f"the runs used different seeds {sorted(seeds)}: the protocol compares the same seeds")
    out = Path(out_dir)
    rng = random.Random(seed)
    by_category: dict[str, list[tuple[str, int]]] = {}
    for key in sorted(a, key=lambda k: (a[k]["file"])):
        by_category.setdefault(a[key]["category"] or "prompts", []).append(key)
    key_rows, rating_rows, sheets = [], [], {}
    for category, keys in by_category.items():
        rows = []
        for prompt, index in keys:
            a_left = rng.random() < 0.5
            left, right = (a, b) if a_left else (b, a)
            rows.append((prompt, index, Image.open(left[(prompt, index)]["path"]).convert("RGB"),
                         Image.open(right[(prompt, index)]["path"]).convert("RGB")))
            row_id = f"{category}/{len(rows) - 1}"
            key_rows.append({"row": row_id, "prompt": prompt, "index": index, "left": "A" if a_left else "B"})
            rating_rows.append({"row": row_id, "category": category, "prompt": prompt, "choice": ""})
        name = re.sub(r"[^A-Za-z0-9]+", "_", category).strip("_")
        sheets[category] = _draw_sheet(rows, out / "sheets" / f"{name}.png")
    with (out / "ratings.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["row", "category", "prompt", "choice"])
        writer.writeheader()
        writer.writerows(rating_rows)
    (out / "key.json").write_text(json.dumps({"A": str(run_a), "B": str(run_b), "rows": key_rows}, indent=2))
    return sheets


def _draw_sheet(rows: list[tuple[str, int, Image.Image, Image.Image]], path: Path) -> Path:
    side = max(max(im.size) for _, _, l_im, r_im in rows for im in (l_im, r_im)) * SCALE
    width = TEXT_WIDTH + 2 * side + 4 * ROW_PAD
    sheet = Image.new("RGB", (width, len(rows) * (side + ROW_PAD) + ROW_PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, index, left, right) in enumerate(rows):
        y = ROW_PAD + i * (side + ROW_PAD)
        text = f"{i}. {prompt} (#{index})"
        lines = [text[j : j + 48] for j in range(0, len(text), 48)]
        draw.multiline_text((ROW_PAD, y + 4), "\n".join(lines), fill="black")
        for k, im in enumerate((left, right)):
            sheet.paste(im.resize((side, side), Image.NEAREST), (TEXT_WIDTH + ROW_PAD + k * (side + 2 * ROW_PAD), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="sample.py output folder of run A (holds samples.json)")
    parser.add_argument("run_b", help="sample.py output folder of run B, same prompts and seed")
    parser.add_argument("out", help="where to write sheets/, ratings.csv and key.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the left/right draw")
    args = parser.parse_args()
    for category, path in build_sheets(args.run_a, args.run_b, args.out, args.seed).items():
        print(f"{category}: {path}")


if __name__ == "__main__":
    main()
