"""Classifier-free guidance (Imagen Sec. 2.2): w = 0, 1 and 3 on a toy network, and the one batched pass."""

import pytest
import torch

from imagen_lit.diffusion import guided_model_fn
from imagen_lit.diffusion.guidance import _batched_cfg, stacked_inputs

B = 3


class ToyNet:
    """Output depends nonlinearly on x, t, the text embedding, its mask and a shared low-res input; counts calls."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, text_embeds, text_mask, lowres=None):
        self.batches.append(x.shape[0])
        emb = (text_embeds * text_mask[..., None]).sum(1)  # (B, D)
        out = torch.tanh(x) * (1 + t[:, None, None, None]) + emb[:, :, None, None]
        return out if lowres is None else out + 0.5 * lowres


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 4, 5, 5, generator=g)
    t = torch.rand(B, generator=g)
    cond = {"text_embeds": torch.randn(B, 6, 4, generator=g), "text_mask": torch.ones(B, 6)}
    null_cond = {"text_embeds": torch.zeros(B, 6, 4), "text_mask": torch.zeros(B, 6)}
    shared = {"lowres": torch.randn(B, 4, 5, 5, generator=g)}
    return x, t, cond, null_cond, shared


def test_w1_is_the_conditional_model(inputs):
    x, t, cond, null_cond, shared = inputs
    net = ToyNet()
    out = guided_model_fn(net, cond, null_cond, 1.0, shared)(x, t)
    torch.testing.assert_close(out, net(x, t, **cond, **shared), rtol=0, atol=0)
    assert net.batches[0] == B, "w = 1 must be one plain conditional pass"
    batched = _batched_cfg(net, x, t, stacked_inputs(cond, null_cond, shared), 1.0)  # two halves at w = 1
    torch.testing.assert_close(batched, out)


def test_w0_is_the_unconditional_model(inputs):
    x, t, cond, null_cond, shared = inputs
    net = ToyNet()
    out = guided_model_fn(net, cond, null_cond, 0.0, shared)(x, t)
    torch.testing.assert_close(out, net(x, t, **null_cond, **shared))


def test_w3_extrapolates_in_one_batched_pass(inputs):
    x, t, cond, null_cond, shared = inputs
    net = ToyNet()
    out = guided_model_fn(net, cond, null_cond, 3.0, shared)(x, t)
    assert net.batches == [2 * B], "guidance must be exactly one forward pass on a batch of 2B"
    out_c, out_u = net(x, t, **cond, **shared), net(x, t, **null_cond, **shared)
    assert not torch.allclose(out_c, out_u), "toy net must depend on the condition for this test to mean much"
    torch.testing.assert_close(out, out_u + 3.0 * (out_c - out_u))


def test_without_null_cond_is_plain_conditional(inputs):
    x, t, cond, _, _ = inputs
    net = ToyNet()
    out = guided_model_fn(net, cond, None, 5.0)(x, t)
    torch.testing.assert_close(out, net(x, t, **cond), rtol=0, atol=0)
    assert net.batches == [B, B]


def test_bad_input(inputs):
    _, _, cond, null_cond, _ = inputs
    with pytest.raises(ValueError, match="guidance_weight must be >= 0, got -1.0"):
        guided_model_fn(ToyNet(), cond, null_cond, -1.0)
    with pytest.raises(ValueError, match="null_cond must have the same keys as cond"):
        guided_model_fn(ToyNet(), cond, {"text_embeds": null_cond["text_embeds"]}, 3.0)


def test_guidance_interval_guides_inside_and_is_conditional_outside(inputs):
    """Kynkaanniemi et al. 2024: w inside [t_lo, t_hi], the conditional model (w = 1) outside, per sample."""
    x, _, cond, null_cond, shared = inputs
    t = torch.tensor([0.1, 0.5, 0.9])  # below, inside and above [0.3, 0.7]
    net = ToyNet()
    out = guided_model_fn(net, cond, null_cond, 3.0, shared, guidance_interval=(0.3, 0.7))(x, t)
    full = guided_model_fn(ToyNet(), cond, null_cond, 3.0, shared)(x, t)
    plain = ToyNet()(x, t, **cond, **shared)
    torch.testing.assert_close(out[1], full[1])
    torch.testing.assert_close(out[[0, 2]], plain[[0, 2]])
    assert not torch.allclose(full[0], plain[0])  # the interval did change the samples outside it


def test_guidance_interval_skips_the_null_branch_outside(inputs):
    x, _, cond, null_cond, shared = inputs
    net = ToyNet()
    guided_model_fn(net, cond, null_cond, 3.0, shared, guidance_interval=[0.3, 0.7])(x, torch.full((B,), 0.9))
    assert net.batches == [B]  # one conditional pass of B, no [cond; null] batch of 2B


@pytest.mark.parametrize("bad", [(0.7, 0.3), (0.0, 1.5), "0.3", [0.1]])
def test_guidance_interval_rejects_bad_values(inputs, bad):
    _, _, cond, null_cond, _ = inputs
    with pytest.raises(ValueError, match="guidance_interval"):
        guided_model_fn(ToyNet(), cond, null_cond, 3.0, guidance_interval=bad)
