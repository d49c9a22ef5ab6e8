"""The text side of the U-Net is computed once per sampling run, with the same samples as computing it every step."""

from __future__ import annotations

import pytest
import torch

import imagen_lit.stages.base as base
from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion
from imagen_lit.models import EfficientUNet, UNet
from imagen_lit.stages import BaseStage


def _stage(net) -> BaseStage:
    return BaseStage(net, GaussianDiffusion(CosineSchedule()), optimizer=torch.optim.AdamW,
                     sampling={"steps": 4, "guidance_weight": 3.0}).eval()


def _nets():
    torch.manual_seed(0)
    yield UNet(image_size=8, text_dim=12, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
               attn_resolutions=(8, 4), head_dim=8, text_attention="cross", text_proj_dim=16)
    torch.manual_seed(0)
    yield EfficientUNet(image_size=8, text_dim=12, base_channels=16, block_channels=(16, 32), num_res_blocks=(1, 1),
                        block_strides=(1, 2), self_attention=(False, True), text_cross_attention=(True, True),
                        num_heads=2, text_proj_dim=16)


@pytest.mark.parametrize("net", list(_nets()), ids=["unet", "efficient"])
def test_cached_text_gives_the_same_samples_and_runs_once_per_layer(net, monkeypatch):
    for p in net.parameters():  # zero-initialised outputs would hide the text path: give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    stage = _stage(net)
    text, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    layers = [m for name, m in net.named_modules() if name.endswith("text_to_kv")]
    assert layers
    calls = {"n": 0}
    for m in layers:
        m.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    cached = stage.generate(text, mask, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert calls["n"] == len(layers)  # once per layer for the whole 4-step run (cond and null in one batch)

    calls["n"] = 0
    monkeypatch.setattr(base, "text_cache", lambda net: torch.no_grad())  # what generate did before
    fresh = stage.generate(text, mask, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert calls["n"] == 4 * len(layers)  # at every step
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)  # the same samples, bit for bit


def test_nothing_is_cached_outside_sampling():
    net = next(_nets())
    text, mask = torch.randn(2, 5, 12, requires_grad=True), torch.ones(2, 5, dtype=torch.bool)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    net(x, t, text, mask).sum().backward()
    first = text.grad.clone()
    net(x, t, text, mask).sum().backward()  # a second training step gets its own graph through the text
    torch.testing.assert_close(text.grad, 2 * first)
