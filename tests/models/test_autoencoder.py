"""The latent-diffusion lever's autoencoder: shapes, the unit-variance latent scale, and that it learns."""

from __future__ import annotations

import pytest
import torch

from imagen_lit.models.autoencoder import ImageAutoencoder


def test_latent_shapes_and_factor():
    torch.manual_seed(0)
    ae = ImageAutoencoder(latent_channels=4, channels=(8, 16, 16))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = ae.encode(x)
    assert ae.factor == 4 and z.shape == (2, 4, 8, 8) and ae.decode(z).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="not divisible by the autoencoder's factor 4"):
        ae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="needs >= 2 levels"):
        ImageAutoencoder(channels=(8,))


def test_fit_latent_scale_gives_unit_variance_latents_and_decode_undoes_it():
    torch.manual_seed(0)
    ae = ImageAutoencoder(latent_channels=4, channels=(8, 16))
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    raw = ae.encoder(x)
    scale = ae.fit_latent_scale(x)
    assert scale == pytest.approx(1 / raw.std().item(), rel=1e-4)
    assert ae.encode(x).std().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(ae.decode(ae.encode(x)), ae.decoder(raw), atol=1e-5)  # the scale cancels


def test_reconstruction_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    ae = ImageAutoencoder(latent_channels=4, channels=(8, 16))
    x = torch.zeros(8, 3, 16, 16) - 1
    x[:, 0, 4:12, 4:12] = 1.0  # a red square on black
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = ae.loss(x).item()
    for _ in range(60):
        opt.zero_grad()
        loss = ae.loss(x)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
