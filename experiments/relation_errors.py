"""Where the position claims of held-out spatial scenes go: both objects found or not, and, when found, whether the
relation is right, reversed or perpendicular (about 0.25 / 0.25 / 0.5 when the relation words are ignored).

    python experiments/relation_errors.py <run>/checkpoints/step_0006000.ckpt --num-scenes 150

More sensitive than the position accuracy when few scenes have both objects right: it asks whether the relation is
followed at all, given the objects. The "colour" line finds the two objects by colour alone (they always differ in
colour), so it shows whether the layout follows the relation words before the shapes are learned.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.build import load_base  # noqa: E402
from imagen_lit.eval.compositional import detect_objects, relation_outcome  # noqa: E402
from imagen_lit.eval.guidance import generate_for_scenes, heldout_scenes  # noqa: E402
from imagen_lit.eval.stats import wilson_interval  # noqa: E402
from imagen_lit.images import to_uint8  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path")
    parser.add_argument("--num-scenes", type=int, default=150, help="spatial scenes, the first of the held-out seed")
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--high-noise-expert", help="a base checkpoint that samples the noisy levels (eDiff-I)")
    parser.add_argument("--switch-log-snr", type=float, default=0.0, help="its log-SNR hand-over")
    parser.add_argument("--guidance-weight", type=float, help="over the stored one (both experts)")
    args = parser.parse_args()
    scenes = [s for s in heldout_scenes(8 * args.num_scenes, args.scene_seed) if s.kind == "spatial"]
    scenes = scenes[: args.num_scenes]
    stage, encoder, _ = load_base(args.ckpt_path, args.high_noise_expert, args.switch_log_snr)
    sampling = {} if args.guidance_weight is None else {"guidance_weight": args.guidance_weight}
    images = generate_for_scenes(stage, encoder.encode, scenes, seed=args.seed, batch_size=50, **sampling)
    images = to_uint8(images.clamp(-1, 1))
    detections = [detect_objects(img) for img in images]
    for match in ("object", "colour"):
        outcomes = Counter(relation_outcome(d, s, match) for d, s in zip(detections, scenes, strict=True))
        found = len(scenes) - outcomes["missing"]
        lo, hi = wilson_interval(outcomes["correct"], found) if found else (0.0, 1.0)
        print(json.dumps({"match": match, "scenes": len(scenes), **dict(outcomes), "both_found": found,
                          "correct_given_found": outcomes["correct"] / max(found, 1), "ci95": [lo, hi]}))


if __name__ == "__main__":
    main()
