"""The most a latent base stage can score: held-out renders passed through its autoencoder, scored by the
compositional scorer beside the renders themselves (a latent stage's samples are decodes, so this is their ceiling).

    python experiments/autoencoder_ceiling.py outputs/lat/ae/checkpoints/last.ckpt --num-scenes 500
    python experiments/autoencoder_ceiling.py <latent base run>/checkpoints/last.ckpt   # its frozen copy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.build import read_stage_checkpoint  # noqa: E402
from imagen_lit.data import render_scene  # noqa: E402
from imagen_lit.eval.compositional import score_batch  # noqa: E402
from imagen_lit.eval.guidance import heldout_scenes  # noqa: E402
from imagen_lit.images import to_uint8  # noqa: E402
from imagen_lit.stages.latent import load_autoencoder_weights  # noqa: E402


def ceiling(ckpt: str | Path, num_scenes: int, scene_seed: int = 2000) -> dict[str, dict[str, float]]:
    """Scores of the renders and of their reconstructions, and the reconstructions' MSE in [-1, 1] units."""
    _, cfg = read_stage_checkpoint(ckpt)
    autoencoder = instantiate(cfg.stage.autoencoder)
    load_autoencoder_weights(autoencoder, ckpt)
    scenes = heldout_scenes(num_scenes, scene_seed)
    renders = np.stack([np.asarray(render_scene(s, cfg.data.resolution)) for s in scenes])  # [N, H, W, 3] uint8
    images = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, H, W] in [-1, 1]
    with torch.no_grad():
        recon = torch.cat([autoencoder.decode(autoencoder.encode(b)) for b in images.split(100)]).clamp(-1, 1)
    keep = ("colour", "counting", "position", "binding", "overall")  # "colour": single objects, colour and shape
    result = {name: {k: v for k, v in score_batch(pixels, scenes).items() if k in keep}
              for name, pixels in (("renders", renders), ("reconstructions", to_uint8(recon)))}
    result["reconstructions"]["mse"] = float((recon - images).pow(2).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="an experiment=quickstart_autoencoder or latent base stage checkpoint")
    parser.add_argument("--num-scenes", type=int, default=500)
    parser.add_argument("--scene-seed", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = ceiling(args.ckpt, args.num_scenes, args.scene_seed)
    for name, scores in result.items():
        print(f"{name:>16s}  " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
