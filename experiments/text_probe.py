"""Does the frozen text encoder tell the U-Net where each shape goes? Linear probes on its token states.

    python experiments/text_probe.py                      # all-MiniLM-L6-v2, 3000 spatial captions of world seed 0
    python experiments/text_probe.py --encoder t5-v1_1-xxl --num-captions 3000
    python experiments/text_probe.py --num-layers 3       # the states after MiniLM's third layer

For each spatial caption ("a red circle to the left of a blue square") two probes read the state of a named shape's
token: (1) the subject's token -> the relation (left of / right of / above / below); (2) each shape's token -> the
side of the other object it must be drawn on (left, right, top, bottom). Logistic regression on standardised
features, fitted on 2/3 of the captions and scored on the rest; chance is 0.25 for both.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.data.world import RELATIONS, sample_scene  # noqa: E402
from imagen_lit.text import FrozenTextEncoder  # noqa: E402

OPPOSITE = {0: 1, 1: 0, 2: 3, 3: 2}  # left of <-> right of, above <-> below


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, steps: int = 500) -> float:
    """Held-out accuracy of a 4-way linear classifier fitted on the rows where `train` is True."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], 4, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x[~train] @ w + b).argmax(1) == y[~train]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--num-captions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0, help="world seed of the captions")
    parser.add_argument("--num-layers", type=int, help="read the states after this many layers (default: all)")
    args = parser.parse_args()
    encoder = FrozenTextEncoder(args.encoder, max_length=32, num_layers=args.num_layers)
    rng = random.Random(args.seed)
    captions, items = [], []
    while len(captions) < args.num_captions:
        scene = sample_scene(rng)
        if scene.kind == "spatial":
            relation = RELATIONS.index(scene.relations[0][1])
            captions.append(scene.caption)
            items.append(((scene.objects[0].shape, relation), (scene.objects[1].shape, OPPOSITE[relation])))
    embeds, _ = encoder.encode(captions)  # (N, L, D)
    tokens = encoder.tokenizer(captions, padding="max_length", max_length=32, truncation=True,
                               return_tensors="pt")["input_ids"]
    rows, sides, relations, subject_rows, caption_of = [], [], [], [], []
    for i, pair in enumerate(items):
        for role, (shape, side) in enumerate(pair):
            first = encoder.tokenizer(shape, add_special_tokens=False)["input_ids"][0]
            j = int((tokens[i] == first).nonzero()[0, 0])  # the shape word's (first) token
            rows.append(embeds[i, j])
            sides.append(side)
            caption_of.append(i)
            if role == 0:
                subject_rows.append(len(rows) - 1)
                relations.append(pair[0][1])
    x, caption_of = torch.stack(rows).float(), torch.tensor(caption_of)
    train = caption_of < (2 * args.num_captions) // 3
    subject = torch.tensor(subject_rows)
    relation_acc = probe(x[subject], torch.tensor(relations), train[subject])
    side_acc = probe(x, torch.tensor(sides), train)
    print(f"encoder {encoder.cache_key}, {args.num_captions} spatial captions (world seed {args.seed}), chance 0.25")
    print(f"subject's shape token -> relation: held-out accuracy {relation_acc:.3f}")
    print(f"each shape's token -> side it is drawn on: held-out accuracy {side_acc:.3f}")


if __name__ == "__main__":
    main()
