import pytest
import torch
from torch import nn

from imagen_lit.models import EfficientUNet, UNet
from imagen_lit.models.efficient_unet import SKIP_SCALE
from imagen_lit.models.layers import TextAttention


def randomise(model: nn.Module) -> nn.Module:
    """Zero-initialised output layers hide the conditioning; give every zero weight random values."""
    torch.manual_seed(0)
    for p in model.parameters():
        if not p.abs().sum():
            nn.init.normal_(p, std=0.05)
    return model


def tiny_efficient(**kw) -> EfficientUNet:
    torch.manual_seed(0)
    args = dict(image_size=16, text_dim=24, base_channels=16, block_channels=(16, 32, 32), num_res_blocks=(1, 1, 2),
                self_attention=(False, True, True), text_cross_attention=(False, True, True), num_heads=4)
    return randomise(EfficientUNet(**{**args, **kw})).eval()


def tiny_standard(**kw) -> UNet:
    torch.manual_seed(0)
    args = dict(image_size=16, text_dim=24, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), head_dim=8)
    return randomise(UNet(**{**args, **kw})).eval()


def inputs(b=2, size=16, length=5, lowres=False):
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(b, 3, size, size, generator=g), torch.rand(b, generator=g),
            torch.randn(b, length, 24, generator=g), torch.ones(b, length, dtype=torch.bool)]
    args[3][0, 3:] = False
    kw = {"lowres": torch.randn(b, 3, size // 4, size // 4, generator=g), "aug_level": torch.rand(b, generator=g)}
    return args, (kw if lowres else {})


def test_shapes_and_conditioning():
    net = tiny_efficient()
    (x, t, text, mask), _ = inputs()
    out = net(x, t, text, mask)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, torch.randn_like(text), mask))


def test_skips_are_scaled_by_one_over_sqrt2():
    net = tiny_efficient()
    (x, t, text, mask), _ = inputs()
    seen = {}
    net.down[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("skip", o))
    net.up[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("input", i[0]))
    net(x, t, text, mask)
    c = seen["skip"].shape[1]
    torch.testing.assert_close(seen["input"][:, c:], seen["skip"] * SKIP_SCALE)
    assert abs(SKIP_SCALE - 2**-0.5) < 1e-12


@pytest.mark.parametrize("make", [tiny_efficient, tiny_standard])
def test_super_resolution_inputs(make):
    net = make(lowres_cond=True)
    (x, t, text, mask), kw = inputs(lowres=True)
    out = net(x, t, text, mask, **kw)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, text, mask, lowres=kw["lowres"], aug_level=kw["aug_level"] * 0.5))
    assert not torch.allclose(out, net(x, t, text, mask, lowres=-kw["lowres"], aug_level=kw["aug_level"]))
    with pytest.raises(ValueError, match="pass lowres"):
        net(x, t, text, mask, aug_level=kw["aug_level"])
    with pytest.raises(ValueError, match="aug_level"):
        net(x, t, text, mask, lowres=kw["lowres"])
    with pytest.raises(ValueError, match=r"lowres must be \[B"):
        net(x, t, text, mask, lowres=kw["lowres"][:, :1], aug_level=kw["aug_level"])


def test_no_self_attention_model_runs_at_any_size():
    """The SR 1024 layout: trained on crops, applied to whole images (Imagen Sec. 2.4)."""
    net = tiny_efficient(self_attention=False, text_attention="cross", lowres_cond=True)
    assert not any(m.self_attention for m in net.modules() if isinstance(m, TextAttention))
    for size in (16, 48):
        (x, t, text, mask), kw = inputs(size=size, lowres=True)
        out = net(x, t, text, mask, **kw)
        assert out.shape == (2, 3, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["concat", "cross", "none"])
@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_conditioning_variants(mode, pooling):
    for net in (tiny_efficient(text_attention=mode, text_pooling=pooling),
                tiny_standard(text_attention=mode, text_pooling=pooling)):
        layers = [m for m in net.modules() if isinstance(m, TextAttention)]
        with_text = [m for m in layers if hasattr(m, "text_to_kv")]
        assert (not with_text) if mode == "none" else with_text
        if mode == "cross":
            assert all(not m.self_attention for m in with_text) and any(m.self_attention for m in layers)
        (x, t, text, mask), _ = inputs()
        assert torch.isfinite(net(x, t, torch.zeros_like(text), torch.zeros_like(mask))).all()


@pytest.mark.parametrize("make", [tiny_efficient, tiny_standard])
def test_speed_switches_give_the_same_results(make):
    (x, t, text, mask), _ = inputs()
    ref = make().train()
    out = ref(x, t, text, mask)
    out.square().mean().backward()
    ref_grads = [p.grad.clone() for p in ref.parameters()]

    math_attn = make(attention_impl="math").eval()
    torch.testing.assert_close(math_attn(x, t, text, mask), ref.eval()(x, t, text, mask), atol=1e-5, rtol=1e-4)

    ckpt = make(gradient_checkpointing=True).train()
    out_ckpt = ckpt(x, t, text, mask)
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_ckpt, out, atol=1e-6, rtol=1e-5)
    for g, p in zip(ref_grads, ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)

    cl = make().to(memory_format=torch.channels_last).eval()
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last), t, text, mask),
                               ref.eval()(x, t, text, mask), atol=1e-4, rtol=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = make().eval()(x, t, text, mask).float()
    full = ref.eval()(x, t, text, mask)
    assert ((low - full).norm() / full.norm()) < 0.05  # bf16: same function up to bf16 rounding


def test_full_resolution_detail_reaches_the_output():
    """The input-conv features join the final block (scaled), so a strided first DBlock keeps full resolution."""
    net = tiny_efficient(block_channels=(16, 32, 32))
    (x, t, text, mask), _ = inputs()
    seen = {}
    net.final.register_forward_pre_hook(lambda m, i: seen.__setitem__("input", i[0]))
    net.inputs.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o[0]))
    net(x, t, text, mask)
    c = seen["features"].shape[1]
    torch.testing.assert_close(seen["input"][:, c:], seen["features"] * SKIP_SCALE)


@pytest.mark.parametrize("make", [tiny_efficient, tiny_standard])
def test_input_position_bands_tell_each_pixel_its_place(make):
    """With input_position_bands the input conv sees Fourier features of each pixel's place (CoordConv): a
    constant image gives a constant output without them (away from the zero-padded border) and a varying one with."""
    x = torch.zeros(1, 3, 16, 16)
    t, text = torch.full((1,), 0.5), torch.randn(1, 5, 24, generator=torch.Generator().manual_seed(2))
    plain, coord = make(), make(input_position_bands=2)
    assert coord.inputs.conv.in_channels == plain.inputs.conv.in_channels + 8
    with torch.no_grad():
        inner_plain = plain.inputs(x, t, text, None, None, None)[0][0, :, 2:-2, 2:-2]  # (C, 12, 12)
        inner_coord = coord.inputs(x, t, text, None, None, None)[0][0, :, 2:-2, 2:-2]
        assert torch.allclose(inner_plain, inner_plain[:, :1, :1].expand_as(inner_plain), atol=1e-6)
        assert (inner_coord - inner_coord[:, :1, :1]).abs().amax() > 1e-2
        assert coord(torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 5, 24)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="input_position_bands must be >= 0"):
        make(input_position_bands=-1)


@pytest.mark.parametrize("make", [tiny_efficient, tiny_standard])
def test_token_positions_make_the_unet_read_word_order(make):
    """Attention and pooling over text tokens are blind to their order: without token_position_dim, exchanging two
    tokens leaves the output as it is (roles must come from the encoder's states); with it, the output changes."""
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 3, 16, 16, generator=g), torch.full((1,), 0.5)
    text = torch.randn(1, 5, 24, generator=g)
    swapped = text[:, [1, 0, 2, 3, 4]]
    plain, placed = make(), make(token_position_dim=8)
    nn.init.normal_(placed.inputs.token_position.weight)  # a place code as large as the tokens themselves
    with torch.no_grad():
        blind = (plain(x, t, text) - plain(x, t, swapped)).abs().amax()
        seen = (placed(x, t, text) - placed(x, t, swapped)).abs().amax()
    assert blind < 1e-5 and seen > max(1e-4, 50 * blind)  # float rounding alone, against a real change
    for bad in (-2, 3):
        with pytest.raises(ValueError, match="token_position_dim must be an even number"):
            make(token_position_dim=bad)


def test_patch_size_runs_the_unet_on_folded_patches():
    """patch_size 2 at 16x16 is the 8x8 U-Net with 12 channels in and out, on pixel-unshuffled x_t and low-res."""
    patched = tiny_efficient(image_size=16, patch_size=2, lowres_cond=True)
    folded = EfficientUNet(image_size=8, text_dim=24, in_channels=12, out_channels=12, base_channels=16,
                           block_channels=(16, 32, 32), num_res_blocks=(1, 1, 2), self_attention=(False, True, True),
                           text_cross_attention=(False, True, True), num_heads=4, lowres_cond=True).eval()
    folded.load_state_dict(patched.state_dict())
    (x, t, text, mask), kw = inputs(lowres=True)
    up = torch.nn.functional.interpolate(kw["lowres"], size=16, mode="bicubic", align_corners=False)
    want = folded(torch.nn.functional.pixel_unshuffle(x, 2), t, text, mask,
                  lowres=torch.nn.functional.pixel_unshuffle(up, 2), aug_level=kw["aug_level"])
    out = patched(x, t, text, mask, **kw)
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.nn.functional.pixel_shuffle(want, 2))


def test_patch_size_errors_name_the_fix():
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        tiny_efficient(patch_size=0)
    with pytest.raises(ValueError, match="not divisible by patch_size x the total stride 16"):
        tiny_efficient(image_size=8, patch_size=2)
    (x, t, text, mask), _ = inputs()
    with pytest.raises(ValueError, match="not divisible by patch_size 2"):
        tiny_efficient(patch_size=2, block_strides=(2, 2, 1))(x[..., :15, :15], t, text, mask)
