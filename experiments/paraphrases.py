"""Does the base stage follow captions in a user's own words? The same held-out scenes, captioned once with the
world's templates and once with paraphrases it never trained on (imagen_lit.eval.paraphrase), sampled with the same
seeds and scored alike.

    python experiments/paraphrases.py <run>/checkpoints/last.ckpt --num-scenes 200
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.build import load_stage  # noqa: E402
from imagen_lit.eval.guidance import evaluate_images, generate_for_scenes, heldout_scenes  # noqa: E402
from imagen_lit.eval.paraphrase import paraphrase  # noqa: E402
from imagen_lit.eval.stats import with_intervals  # noqa: E402

CATEGORIES = ("colour", "counting", "position", "binding", "overall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stage, encoder, _ = load_stage(args.ckpt)
    scenes = heldout_scenes(args.num_scenes, args.scene_seed)
    rng = random.Random(args.scene_seed)
    variants = {"templates": scenes, "paraphrases": [paraphrase(s, rng) for s in scenes]}
    results = {}
    for name, captioned in variants.items():
        images = generate_for_scenes(stage, encoder.encode, captioned, seed=0, batch_size=args.batch_size)
        metrics = {k.removeprefix("alignment/"): v for k, v in evaluate_images(images, captioned).items()}
        results[name] = with_intervals(metrics)
    print(f"{args.num_scenes} held-out scenes (world seed {args.scene_seed}), same sampling seeds; Wilson 95%")
    print(f"{'captions':<12} " + " ".join(f"{c:>20}" for c in CATEGORIES))
    for name, rows in results.items():
        cells = [f"{rows[c]['accuracy']:.2f} [{rows[c]['lo']:.2f}, {rows[c]['hi']:.2f}]" for c in CATEGORIES]
        print(f"{name:<12} " + " ".join(cell.rjust(20) for cell in cells))
    for template, para in list(zip(scenes, variants["paraphrases"], strict=True))[:6]:
        print(f"  {template.caption!r:<56} -> {para.caption!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
