"""Trainable transformer blocks over the frozen encoder's tokens (unet.text_layers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import imagen_lit.stages.base as base
from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion
from imagen_lit.models import EfficientUNet, UNet
from imagen_lit.models.text_refiner import TextRefiner
from imagen_lit.stages import BaseStage


def randomised(refiner: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in refiner.parameters():  # the zero-initialised branches would make every check trivially pass
        nn.init.normal_(p, std=0.1)
    return refiner.eval()


def tokens(b=3, length=6, dim=32):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    return torch.randn(b, length, dim, generator=g), mask


def test_identity_at_initialisation():
    x, mask = tokens()
    torch.testing.assert_close(TextRefiner(32, 2, head_dim=16)(x, mask), x, rtol=0, atol=0)


def test_padded_tokens_do_not_reach_the_real_ones():
    refiner = randomised(TextRefiner(32, 2, head_dim=16))
    x, mask = tokens()
    changed = x.clone()
    changed[0, 4:] = 100.0
    torch.testing.assert_close(refiner(changed, mask)[0, :4], refiner(x, mask)[0, :4])
    assert not torch.allclose(refiner(x, mask)[0], refiner(x, None)[0])  # the mask is applied at all


def test_a_dropped_caption_stays_finite():
    x, mask = tokens()
    mask[1] = False
    assert torch.isfinite(randomised(TextRefiner(32, 1, head_dim=16))(x, mask)).all()


def test_word_order_reaches_the_tokens():
    refiner = randomised(TextRefiner(32, 1, head_dim=16))
    x, _ = tokens()
    order = torch.tensor([1, 0, 2, 3, 4, 5])  # swap the first two words
    swapped = refiner(x[:, order], None)[:, order]
    assert (swapped - refiner(x, None)).abs().max() > 1e-4  # without position codes this would be equal


def test_one_line_errors():
    with pytest.raises(ValueError, match="text_layers must be >= 0"):
        EfficientUNet(image_size=8, text_dim=32, base_channels=8, block_channels=(16,), num_res_blocks=(1,),
                      block_strides=(2,), self_attention=False, text_cross_attention=True, num_heads=2,
                      text_layers=-1)
    with pytest.raises(ValueError, match="text_layers must be >= 1"):
        TextRefiner(32, 0)


@pytest.mark.parametrize("kind", ["unet", "efficient"])
def test_refined_once_per_sampling_run_with_the_same_samples(kind, monkeypatch):
    torch.manual_seed(0)
    if kind == "unet":
        net = UNet(image_size=8, text_dim=32, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                   attn_resolutions=(4,), head_dim=8, text_layers=1)
    else:
        net = EfficientUNet(image_size=8, text_dim=32, base_channels=16, block_channels=(16, 32),
                            num_res_blocks=(1, 1), block_strides=(1, 2), self_attention=(False, True),
                            text_cross_attention=(True, True), num_heads=2, text_layers=1)
    for p in net.parameters():
        nn.init.normal_(p, std=0.05)
    stage = BaseStage(net, GaussianDiffusion(CosineSchedule()), optimizer=torch.optim.AdamW,
                      sampling={"steps": 3, "guidance_weight": 3.0}).eval()
    calls = {"n": 0}
    net.inputs.text_refiner.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    x, mask = tokens(b=2, length=5)
    cached = stage.generate(x, mask, generator=torch.Generator().manual_seed(0), use_ema=False)
    refined = calls["n"]
    monkeypatch.setattr(base, "text_cache", lambda net: torch.no_grad())
    fresh = stage.generate(x, mask, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert (refined, calls["n"] - refined) == (1, 3)  # cached: once a run (cond and null in one batch), else per step
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


def test_the_diffusion_loss_trains_the_refiner():
    torch.manual_seed(0)
    net = EfficientUNet(image_size=8, text_dim=32, base_channels=16, block_channels=(16, 32), num_res_blocks=(1, 1),
                        block_strides=(1, 2), self_attention=(False, True), text_cross_attention=(True, True),
                        num_heads=2, text_layers=2)
    for name, p in net.named_parameters():
        if not p.abs().sum() and "text_refiner" not in name:  # the U-Net's own zero outputs would block the path
            nn.init.normal_(p, std=0.05)
    x, mask = tokens(b=2, length=5)
    net(torch.randn(2, 3, 8, 8), torch.rand(2), x, mask).square().mean().backward()
    last = net.inputs.text_refiner.blocks[-1]
    assert last.out.weight.grad.abs().sum() > 0 and last.mlp[-1].weight.grad.abs().sum() > 0
