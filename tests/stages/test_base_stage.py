import pytest
import torch
from torch import nn

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion
from imagen_lit.models import UNet
from imagen_lit.stages import BaseStage, linear_warmup


def make_stage(cond_drop_prob: float = 0.1) -> BaseStage:
    torch.manual_seed(0)
    unet = UNet(image_size=8, text_dim=12, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), head_dim=8)
    return BaseStage(unet, GaussianDiffusion(CosineSchedule()), optimizer=torch.optim.AdamW,
                     cond_drop_prob=cond_drop_prob, sampling={"steps": 3})


def test_drop_text_rates():
    text = torch.randn(20000, 2, 12) + 5
    mask = torch.ones(20000, 2, dtype=torch.bool)
    torch.manual_seed(0)
    dropped_embeds, dropped_mask = make_stage(0.1).drop_text(text, mask)
    dropped = ~dropped_mask[:, 0]
    assert 0.09 < dropped.float().mean() < 0.11  # Imagen Sec. 2.2: 10%
    assert (dropped_embeds[dropped] == 0).all() and not dropped_mask[dropped].any()
    torch.testing.assert_close(dropped_embeds[~dropped], text[~dropped])
    embeds, m = make_stage(0.0).drop_text(text, mask)
    assert m.all() and torch.equal(embeds, text)


def test_training_step_and_ema_update():
    stage = make_stage()
    batch = {"images": torch.rand(4, 3, 8, 8) * 2 - 1, "text_embeds": torch.randn(4, 3, 12),
             "text_mask": torch.ones(4, 3, dtype=torch.bool), "n_skipped": 2}
    loss = stage.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    stage.optimizer_step(0, 0, stage.configure_optimizers())  # the step, then the EMA update
    assert stage.skipped_samples == 2
    ema_w = stage.ema.module.inputs.conv.weight
    assert not torch.equal(ema_w, stage.unet.inputs.conv.weight)  # averaged, not copied
    assert int(stage.ema.num_updates) == 1


def test_generate_is_seeded_and_validated():
    stage = make_stage().eval()
    text, mask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)
    a = stage.generate(text, mask, generator=torch.Generator().manual_seed(0))
    b = stage.generate(text, mask, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-3  # dynamic thresholding keeps x0 in range (up to sigma at t=0)
    with pytest.raises(ValueError, match="unknown sampling options"):
        stage.generate(text, mask, guidance=2.0)
    with pytest.raises(ValueError, match="sampler"):
        stage.generate(text, mask, sampler="euler_a")


def test_linear_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup(opt, warmup_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_misspelled_sampling_option_in_the_config_fails_at_construction():
    unet = UNet(image_size=8, text_dim=12, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), head_dim=8)
    with pytest.raises(ValueError, match=r"unknown sampling options \['guidance'\]"):
        BaseStage(unet, GaussianDiffusion(CosineSchedule()), optimizer=torch.optim.AdamW, sampling={"guidance": 3})


def test_noise_levels_reach_a_bf16_network_in_fp32():
    """t = 0.999 in bf16 is 1.0 (log-SNR -12.9 -> -20): t and aug_level must not be cast with the weights."""
    seen = {}

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, x, t, text_embeds=None, aug_level=None):
            seen.update(x=x.dtype, t=t, text=text_embeds.dtype, aug=aug_level)
            return x

    fn = make_stage()._net_fn(Spy())
    t = torch.tensor([0.999, 0.0001])
    fn(torch.zeros(2, 3, 2, 2), t, text_embeds=torch.zeros(2, 1, 4), aug_level=torch.tensor([0.999, 0.3]))
    assert seen["x"] == seen["text"] == torch.bfloat16
    assert seen["t"].dtype == seen["aug"].dtype == torch.float32
    assert torch.equal(seen["t"], t) and seen["aug"][0].item() == pytest.approx(0.999, abs=1e-7)


@pytest.mark.slow
def test_compiled_unet_gives_the_eager_loss():
    """stage.compile=true compiles the training U-Net in place: same loss, same state-dict keys, eager EMA."""
    batch = {"images": torch.rand(4, 3, 8, 8) * 2 - 1, "text_embeds": torch.randn(4, 3, 12),
             "text_mask": torch.ones(4, 3, dtype=torch.bool)}
    losses = []
    for compiled in (False, True):
        stage = make_stage(cond_drop_prob=0.0)
        if compiled:
            stage.unet.compile()
        torch.manual_seed(1)
        losses.append(stage.training_step(batch, 0).detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    unet = UNet(image_size=8, text_dim=12, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), head_dim=8)
    stage = BaseStage(unet, GaussianDiffusion(CosineSchedule()), optimizer=torch.optim.AdamW, compile=True)
    assert not any(k.startswith("_orig_mod") for k in stage.state_dict())
    assert stage.unet._compiled_call_impl is not None and stage.ema.module._compiled_call_impl is None


def test_loss_by_noise_level_is_the_mean_per_quarter_of_t():
    from imagen_lit.stages.base import loss_by_noise_level

    losses = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])
    t = torch.tensor([0.1, 0.2, 0.6, 0.99, 1.0])  # buckets 0, 0, 2, 3, 3 (t = 1 joins the last)
    out = loss_by_noise_level(losses, t)
    assert out[0] == 2.0 and out[1].isnan() and out[2] == 5.0 and out[3] == 8.0


def test_an_expert_pair_samples_each_level_with_its_own_stage():
    from imagen_lit.stages.experts import ExpertPair

    a = make_stage().eval()
    torch.manual_seed(1)
    b = make_stage().eval()
    for p in b.ema.module.parameters():  # a different network: the pair must say which one ran
        p.data.add_(torch.randn_like(p) * 0.1)
    text, mask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)

    def run(stage):
        return stage.generate(text, mask, generator=torch.Generator().manual_seed(0))

    assert not torch.allclose(run(a), run(b), atol=1e-3)
    torch.testing.assert_close(run(ExpertPair(a, b, switch_log_snr=-100.0)), run(a))  # a owns every level
    torch.testing.assert_close(run(ExpertPair(a, b, switch_log_snr=100.0)), run(b), atol=1e-4, rtol=0)  # b does
    mixed = run(ExpertPair(a, b, switch_log_snr=0.0))
    assert not torch.allclose(mixed, run(a), atol=1e-3) and not torch.allclose(mixed, run(b), atol=1e-3)
    pair = ExpertPair(a, b, high_noise_sampling={"guidance_weight": 7.0})
    assert pair.sampling["high_noise"]["guidance_weight"] == 7.0 and pair.sampling["switch_log_snr"] == 0.0
    with pytest.raises(ValueError, match="unknown sampling options"):
        ExpertPair(a, b, high_noise_sampling={"guidance": 2.0})
