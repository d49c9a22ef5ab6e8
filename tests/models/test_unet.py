import pytest
import torch
from torch import nn

from imagen_lit.models import UNet


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    args = dict(image_size=16, text_dim=24, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), head_dim=8)
    unet = UNet(**{**args, **kw})
    # The output conv is zero-initialised (so training starts from 0); give it weights to see the conditioning.
    nn.init.normal_(unet.out[-1].weight, std=0.1)
    for m in unet.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.abs().sum():
            nn.init.normal_(m.weight, std=0.05)
    return unet.eval()


def inputs(b: int = 2, length: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 16, 16, generator=g)
    t = torch.rand(b, generator=g)
    text = torch.randn(b, length, 24, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask


def test_output_shape_and_conditioning():
    unet = tiny_unet()
    x, t, text, mask = inputs()
    out = unet(x, t, text, mask)
    assert out.shape == x.shape
    assert not torch.allclose(out, unet(x, t, torch.randn_like(text), mask))  # text matters
    assert not torch.allclose(out, unet(x, t.flip(0), text, mask))  # time matters


def test_masked_tokens_are_ignored():
    unet = tiny_unet()
    x, t, text, mask = inputs()
    changed = text.clone()
    changed[0, 3:] = 100.0  # only padded positions of sample 0
    torch.testing.assert_close(unet(x, t, text, mask), unet(x, t, changed, mask))


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_empty_caption_is_finite(pooling):
    unet = tiny_unet(text_pooling=pooling)
    x, t, text, mask = inputs()
    out = unet(x, t, torch.zeros_like(text), torch.zeros_like(mask))
    assert torch.isfinite(out).all()


def test_channels_last_matches():
    unet = tiny_unet()
    x, t, text, mask = inputs()
    ref = unet(x, t, text, mask)
    unet_cl = unet.to(memory_format=torch.channels_last)
    out = unet_cl(x.contiguous(memory_format=torch.channels_last), t, text, mask)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_every_parameter_gets_a_gradient():
    unet = tiny_unet().train()
    x, t, text, mask = inputs()
    unet(x, t, text, mask).square().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_bad_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_size=18, text_dim=8, channel_mults=(1, 2, 4))
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNet(image_size=16, text_dim=8, channel_mults=(1, 2), num_res_blocks=[1, 2, 3])
    with pytest.raises(ValueError, match="pooling"):
        UNet(image_size=16, text_dim=8, base_channels=16, text_pooling="max")


def test_position_features_tell_tokens_of_a_flat_image_apart():
    """Without them attention cannot tell where a token is: a flat image gives every token the same output."""
    from imagen_lit.models.layers import TextAttention, position_features

    torch.manual_seed(0)
    x, text = torch.ones(1, 16, 4, 4), torch.randn(1, 3, 8)
    for bands, distinct in ((0, False), (3, True)):
        attn = TextAttention(16, 8, head_dim=8, position_bands=bands)
        torch.nn.init.normal_(attn.out.weight)  # the output layer starts at zero; open it
        out = attn(x, text, torch.ones(1, 3, dtype=torch.bool))[0].flatten(1)  # (C, HW)
        assert (out.std(dim=1).max() > 1e-4) == distinct
    feats = position_features(2, 3, 2, "cpu", torch.float32)
    assert feats.shape == (6, 8) and torch.unique(feats, dim=0).shape[0] == 6


@pytest.mark.parametrize("mode", ["concat", "cross"])
def test_no_mask_when_nothing_is_padded_gives_the_masked_output(mode, monkeypatch):
    """text_mask None (no padded token) runs attention unmasked, as SDPA's flash kernel needs; same numbers as an
    all-True mask. Self-attention without text never builds a mask."""
    import imagen_lit.models.layers as layers

    unet = tiny_unet(text_attention=mode)
    x, t, text, _ = inputs()
    full = torch.ones(text.shape[:2], dtype=torch.bool)
    masks = []
    real = layers.attention
    monkeypatch.setattr(layers, "attention", lambda q, k, v, mask, impl="sdpa": masks.append(mask) or
                        real(q, k, v, mask, impl))
    torch.testing.assert_close(unet(x, t, text, None), unet(x, t, text, full))
    calls = len(masks) // 2
    assert all(m is None for m in masks[:calls])  # unmasked everywhere without padding
    assert any(m is not None for m in masks[calls:])  # the masked run did mask the text layers
    if mode == "cross":  # self-attention-only layers: no mask even when the text is padded
        assert sum(m is None for m in masks[calls:]) == calls // 2
