"""Worker-side stages: the batcher's skip accounting, image loading and collation."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from imagen_lit.data.pipeline import Batcher, SkipCounter, collate, load_image


def _sample(i: int, length: int) -> dict:
    return {"key": str(i), "image": torch.zeros(3, 4, 4), "caption": "c", "spec": "",
            "embed": torch.full((length, 2), float(i + 1))}


def test_batcher_carries_trailing_skips_on_the_last_batch():
    counter = SkipCounter()

    def stream():
        counter.n += 1  # a skip before the first sample
        for i in range(4):
            yield _sample(i, 1)
        counter.n += 2  # skips after the last sample, when a full batch was already complete

    batches = list(Batcher(2, counter)(stream()))
    assert [len(b["keys"]) for b in batches] == [2, 2]
    assert sum(b["n_skipped"] for b in batches) == 3 and batches[-1]["n_skipped"] == 2


def test_collate_pads_text_with_zeros():
    batch = collate([_sample(0, 3), _sample(1, 1)], n_skipped=5, max_text_length=2)
    assert batch["text_embeds"].shape == (2, 2, 2) and batch["n_skipped"] == 5
    assert batch["text_mask"].tolist() == [[True, True], [True, False]]
    assert batch["text_embeds"][1, 1].abs().sum() == 0 and (batch["text_embeds"][0] == 1).all()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_is_exact_at_the_target_size():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    image = load_image(_png(array), 16)  # (3, 16, 16)
    back = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)  # (16, 16, 3)
    assert torch.equal(back, torch.from_numpy(array))


def test_load_image_antialiases_when_shrinking():
    checker = (np.indices((64, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    image = load_image(_png(np.stack([checker] * 3, axis=-1)), 16)
    assert image.shape == (3, 16, 16)
    assert image.abs().max() < 0.1  # averaged to mid grey, not aliased to black/white
