"""SRStage: noise conditioning augmentation in training and sampling, output sizes, and its errors (Sec. 2.4)."""

import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion
from imagen_lit.models import EfficientUNet
from imagen_lit.stages import SRStage
from imagen_lit.stages.flops import count_flops

TEXT_DIM = 12


def tiny_unet(self_attention: bool = False, lowres_cond: bool = True, image_size: int = 16) -> EfficientUNet:
    torch.manual_seed(0)
    return EfficientUNet(
        image_size=image_size, text_dim=TEXT_DIM, base_channels=8, block_channels=(8, 16), num_res_blocks=(1, 1),
        self_attention=(False, self_attention), text_cross_attention=(False, True),
        text_attention="concat" if self_attention else "cross", num_heads=2, lowres_cond=lowres_cond,
    )


def make_stage(noise_aug: bool = True, fully_convolutional: bool = False, **sampling) -> SRStage:
    """A 8 -> 16 stage (scale 2)."""
    sampling = {"steps": 2, "aug_level": 0.3 if noise_aug else 0.0, **sampling}
    return SRStage(tiny_unet(self_attention=not fully_convolutional), GaussianDiffusion(CosineSchedule()),
                   lowres_size=8, noise_aug=noise_aug, fully_convolutional=fully_convolutional,
                   optimizer=torch.optim.AdamW, sampling=sampling)


def make_batch(b: int = 4, size: int = 16, scale: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"images": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
            "lowres": torch.rand(b, 3, size // scale, size // scale, generator=g) * 2 - 1,
            "text_embeds": torch.randn(b, 3, TEXT_DIM, generator=g), "text_mask": torch.ones(b, 3, dtype=torch.bool)}


def spy(net: torch.nn.Module) -> list[dict]:
    """Record the keyword inputs of every forward call of net."""
    calls: list[dict] = []
    net.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_training_lowres_is_noised_at_the_sampled_level():
    stage, batch = make_stage(), make_batch()
    torch.manual_seed(0)
    cond = stage.condition(batch)
    torch.manual_seed(0)  # replay: one level per sample, then the noise
    level = torch.rand(4)
    noise = torch.randn(batch["lowres"].shape)
    assert torch.equal(cond["aug_level"], level) and len(set(level.tolist())) == 4
    torch.testing.assert_close(cond["lowres"], stage.diffusion.q_sample(batch["lowres"], level, noise))


def test_max_aug_level_bounds_the_training_levels_and_sampling():
    """stage.max_aug_level=m: training draws aug_level ~ U(0, m) (the same draw as U(0, 1), scaled); sampling above
    m, a level it never trained on, is a one-line error at construction and at generate."""
    stage, batch = make_stage(), make_batch()
    stage.max_aug_level = 0.25
    torch.manual_seed(0)
    cond = stage.condition(batch)
    torch.manual_seed(0)
    torch.testing.assert_close(cond["aug_level"], torch.rand(4) * 0.25)
    diffusion = GaussianDiffusion(CosineSchedule())
    with pytest.raises(ValueError, match="above max_aug_level 0.2, a level this stage never trains on"):
        SRStage(tiny_unet(), diffusion, lowres_size=8, max_aug_level=0.2, optimizer=torch.optim.AdamW,
                sampling={"aug_level": 0.3})
    with pytest.raises(ValueError, match=r"max_aug_level must be in \(0, 1\]"):
        SRStage(tiny_unet(), diffusion, lowres_size=8, max_aug_level=0.0, optimizer=torch.optim.AdamW)
    bounded = SRStage(tiny_unet(), diffusion, lowres_size=8, max_aug_level=0.3, optimizer=torch.optim.AdamW,
                      sampling={"steps": 2, "aug_level": 0.1})
    b = make_batch(2)
    with pytest.raises(ValueError, match="trained on aug_level <= 0.3; sample with aug_level <= 0.3, got 0.5"):
        bounded.generate(b["text_embeds"], b["text_mask"], b["lowres"], aug_level=0.5)


def test_a_residual_stage_models_what_bicubic_misses_and_adds_it_back(monkeypatch):
    """residual=true: the training target is (x - bicubic(noised low-res)) * residual_scale, and sampling returns
    the sampled residual / residual_scale plus that upsampling; a residual of zero gives bicubic exactly."""
    diffusion = GaussianDiffusion(CosineSchedule())
    stage = SRStage(tiny_unet(), diffusion, lowres_size=8, residual=True, residual_scale=4.0,
                    optimizer=torch.optim.AdamW, sampling={"steps": 2, "aug_level": 0.2})
    batch = make_batch()
    torch.manual_seed(0)
    cond = stage.condition(batch)
    up = torch.nn.functional.interpolate(cond["lowres"], size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(stage.diffusion_target(batch["images"], cond), (batch["images"] - up) * 4.0)
    seen = []
    monkeypatch.setattr(diffusion, "training_loss",
                        lambda fn, x, **kw: seen.append((x, kw["lowres"])) or (x.new_zeros(4), x[:, 0, 0, 0]))
    stage.training_step(batch, 0)
    target, lowres = seen[0]
    up = torch.nn.functional.interpolate(lowres, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(target, (batch["images"] - up) * 4.0)  # the loss sees the residual of its own input
    residual = torch.full((2, 3, 16, 16), 0.4)
    monkeypatch.setattr("imagen_lit.stages.base.BaseStage.generate", lambda self, *a, **k: residual)
    b = make_batch(2)
    lowres_in = []
    real_augment = stage.augment
    monkeypatch.setattr(stage, "augment", lambda *a, **k: lowres_in.append(real_augment(*a, **k)) or lowres_in[-1])
    out = stage.generate(b["text_embeds"], b["text_mask"], b["lowres"])
    up = torch.nn.functional.interpolate(lowres_in[0][0], size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, (0.1 + up).clamp(-1, 1))
    with pytest.raises(ValueError, match="residual_scale must be > 0"):
        SRStage(tiny_unet(), diffusion, lowres_size=8, residual=True, residual_scale=0.0, optimizer=torch.optim.AdamW)


def test_training_step_feeds_the_network_what_condition_made():
    stage, batch = make_stage(), make_batch()
    made = []
    real = stage.condition
    stage.condition = lambda b: made.append(real(b)) or made[-1]
    calls = spy(stage.unet)
    loss = stage.training_step(batch, 0)
    assert torch.isfinite(loss) and len(calls) == 1
    for key in ("lowres", "aug_level"):
        assert torch.equal(calls[0][key], made[0][key])
    assert not torch.allclose(calls[0]["lowres"], batch["lowres"], atol=0.01)  # noised
    loss.backward()
    stage.optimizer_step(0, 0, stage.configure_optimizers())  # the step, then the EMA update
    assert int(stage.ema.num_updates) == 1


def test_switch_off_keeps_lowres_clean_and_level_zero():
    stage, batch = make_stage(noise_aug=False), make_batch()
    calls = spy(stage.unet)
    stage.training_step(batch, 0)
    assert torch.equal(calls[0]["lowres"], batch["lowres"]) and torch.equal(calls[0]["aug_level"], torch.zeros(4))
    text, mask = batch["text_embeds"], batch["text_mask"]
    stage.eval().generate(text, mask, batch["lowres"], use_ema=False)
    assert all(torch.equal(c["lowres"][:4], batch["lowres"]) and not c["aug_level"].any() for c in calls[1:])
    with pytest.raises(ValueError, match="aug_level=0"):
        stage.generate(text, mask, batch["lowres"], aug_level=0.3)
    with pytest.raises(ValueError, match="stage.sampling.aug_level=0"):
        make_stage(noise_aug=False, aug_level=0.3)


def test_sampling_uses_the_fixed_level_and_keeps_lowres_in_both_guidance_branches():
    stage, batch = make_stage(guidance_weight=3.0), make_batch(b=2)
    stage.eval()
    calls = spy(stage.unet)
    out = stage.generate(batch["text_embeds"], batch["text_mask"], batch["lowres"], use_ema=False,
                         generator=torch.Generator().manual_seed(5))
    assert out.shape == (2, 3, 16, 16) and len(calls) == 2  # 2 steps, one batched [cond; null] call each
    g = torch.Generator().manual_seed(5)  # replay: the augmentation noise is drawn first
    expected = stage.diffusion.q_sample(batch["lowres"], torch.full((2,), 0.3), torch.randn(2, 3, 8, 8, generator=g))
    for c in calls:
        assert torch.equal(c["aug_level"], torch.full((4,), 0.3))
        torch.testing.assert_close(c["lowres"], torch.cat([expected, expected]))  # both branches
        assert torch.equal(c["text_embeds"][:2], batch["text_embeds"]) and not c["text_embeds"][2:].any()
    calls.clear()
    stage.generate(batch["text_embeds"], batch["text_mask"], batch["lowres"], aug_level=0.0, use_ema=False)
    assert torch.equal(calls[0]["aug_level"], torch.zeros(4))
    assert (calls[0]["lowres"][:2] - batch["lowres"]).abs().max() < 1e-3


@pytest.mark.parametrize("lowres_hw", [(8, 8), (12, 8), (24, 24)])
def test_crop_trained_stage_samples_at_lowres_size_times_scale(lowres_hw):
    stage = make_stage(fully_convolutional=True).eval()
    text, mask = torch.randn(2, 3, TEXT_DIM), torch.ones(2, 3, dtype=torch.bool)
    lowres = torch.rand(2, 3, *lowres_hw) * 2 - 1
    a = stage.generate(text, mask, lowres, generator=torch.Generator().manual_seed(0))
    b = stage.generate(text, mask, lowres, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 2 * lowres_hw[0], 2 * lowres_hw[1]) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-3  # dynamic thresholding (up to sigma at t = 0)


def test_crop_training_batches_of_any_aligned_size():
    stage = make_stage(fully_convolutional=True)
    assert torch.isfinite(stage.training_step(make_batch(size=8), 0))  # 8x8 crops of 16x16 images
    assert count_flops(stage, make_batch(size=8)) > 0


def test_lowres_shape_errors_say_what_to_do():
    stage = make_stage().eval()
    text, mask = torch.randn(2, 3, TEXT_DIM), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"lowres must be 8x8 \(image_size 16 / scale 2\), got 16x16; resize"):
        stage.generate(text, mask, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"lowres must be \[B, 3, h, w\]"):
        stage.generate(text, mask, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"lowres must be \[B, 3, h, w\]"):
        stage.generate(text, mask, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="3 images for 2 captions"):
        stage.generate(text, mask, torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown sampling options"):
        stage.generate(text, mask, torch.zeros(2, 3, 8, 8), aug=0.1)
    with pytest.raises(ValueError, match=r"aug_level must be in \[0, 1\]"):
        stage.generate(text, mask, torch.zeros(2, 3, 8, 8), aug_level=2.0)
    with pytest.raises(ValueError, match="multiple of the U-Net's total stride 4"):
        make_stage(fully_convolutional=True).generate(text, mask, torch.zeros(2, 3, 7, 8))


def test_batch_errors_say_what_to_do():
    stage, batch = make_stage(), make_batch()
    with pytest.raises(ValueError, match="set data.lowres_resolution"):
        stage.training_step({k: v for k, v in batch.items() if k != "lowres"}, 0)
    with pytest.raises(ValueError, match=r"upsamples by 2.*data.resolution / 2"):
        stage.training_step({**batch, "lowres": torch.zeros(4, 3, 4, 4)}, 0)


def test_construction_errors():
    diffusion = GaussianDiffusion(CosineSchedule())
    with pytest.raises(ValueError, match="lowres_cond=true"):
        SRStage(tiny_unet(lowres_cond=False), diffusion, lowres_size=8, optimizer=torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown sampling options"):
        SRStage(tiny_unet(), diffusion, lowres_size=8, optimizer=torch.optim.AdamW, sampling={"aug": 0.1})
    with pytest.raises(ValueError, match="data.lowres_resolution"):
        SRStage(tiny_unet(), diffusion, lowres_size=None, optimizer=torch.optim.AdamW)
    with pytest.raises(ValueError, match="whole multiple"):
        SRStage(tiny_unet(), diffusion, lowres_size=6, optimizer=torch.optim.AdamW)
    with pytest.raises(ValueError, match="without self-attention"):
        SRStage(tiny_unet(self_attention=True), diffusion, lowres_size=8, fully_convolutional=True,
                optimizer=torch.optim.AdamW)


def test_unet_factory_is_checked_when_built():
    stage = SRStage(lambda: tiny_unet(lowres_cond=False), GaussianDiffusion(CosineSchedule()), lowres_size=8,
                    optimizer=torch.optim.AdamW)
    with pytest.raises(ValueError, match="lowres_cond=true"):
        stage.configure_model()
