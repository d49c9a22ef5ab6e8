"""Low-res conditioning images from the high-res data: antialiased downsample and aligned, seeded crops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imagen_lit.data import TextImageDataModule
from imagen_lit.data.lowres import check_lowres_options, downsample

SYNTHETIC = {"num_scenes": 12, "seed": 0, "samples_per_shard": 6}


def _batches(tmp_path, encoder, **kwargs) -> list[dict]:
    dm = TextImageDataModule(encoder, data_dir=str(tmp_path), resolution=32, batch_size=4, num_workers=0,
                             shuffle_buffer=4, synthetic=SYNTHETIC, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return list(dm.train_dataloader())


def test_downsample_is_antialiased_bicubic_in_range():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = downsample(x, 4)
    expected = F.interpolate(x, size=(4, 4), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    assert out.shape == (2, 3, 4, 4) and torch.equal(out, expected) and torch.equal(downsample(x[0], 4), out[0])
    # Antialiasing averages: a one-pixel checkerboard (pure Nyquist) becomes flat grey, not an alias pattern.
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1  # (16, 16) of +-1
    flat = downsample(checker.expand(1, 3, 16, 16), 4)
    assert flat.abs().max() < 0.05
    edge = torch.full((1, 3, 16, 16), -1.0)
    edge[..., 8:] = 1.0
    assert downsample(edge, 8).abs().max() <= 1.0


def test_datamodule_lowres_is_the_downsample_of_images(tmp_path, fake_encoder):
    batches = _batches(tmp_path, fake_encoder, lowres_resolution=8)
    for b in batches:
        n = len(b["keys"])
        assert b["images"].shape == (n, 3, 32, 32) and b["lowres"].shape == (n, 3, 8, 8)
        torch.testing.assert_close(b["lowres"], downsample(b["images"], 8))
    assert "lowres" not in _batches(tmp_path, fake_encoder)[0]  # base stages: unchanged batches


def test_crops_are_aligned_and_seeded(tmp_path, fake_encoder):
    full = {k: (img, low) for b in _batches(tmp_path, fake_encoder, lowres_resolution=16)
            for k, img, low in zip(b["keys"], b["images"], b["lowres"], strict=True)}
    first = _batches(tmp_path, fake_encoder, lowres_resolution=16, crop_size=8)
    again = _batches(tmp_path, fake_encoder, lowres_resolution=16, crop_size=8)
    offsets = set()
    for b, b2 in zip(first, again, strict=True):
        assert b["images"].shape[-2:] == (8, 8) and b["lowres"].shape[-2:] == (4, 4)
        assert torch.equal(b["images"], b2["images"]) and torch.equal(b["lowres"], b2["lowres"])  # deterministic
        for key, hi, lo in zip(b["keys"], b["images"], b["lowres"], strict=True):
            image, lowres = full[key]
            # The crop of the whole image's downsample, at the same place: offsets a multiple of the scale (2).
            found = [(top, left) for top in range(13) for left in range(13)
                     if torch.equal(lowres[:, top : top + 4, left : left + 4], lo)
                     and torch.equal(image[:, 2 * top : 2 * top + 8, 2 * left : 2 * left + 8], hi)]
            assert found, f"sample {key}: crop not aligned with the whole image"
            offsets.add(found[0])
    assert len(offsets) > 3  # random offsets, not one fixed crop


@pytest.mark.parametrize(
    ("lowres_resolution", "crop_size", "match"),
    [(12, None, "must divide resolution 32"), (32, None, "must divide"), (None, 8, "set lowres_resolution"),
     (8, 6, "multiple of the scale 4"), (8, 64, "between 4 and 32")],
)
def test_bad_options(lowres_resolution, crop_size, match):
    with pytest.raises(ValueError, match=match):
        check_lowres_options(32, lowres_resolution, crop_size)
