"""GaussianDiffusion: noising statistics, targets, the training loss and the checks done before sampling."""

import math

import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion, LinearSchedule

PREDICTIONS = ("eps", "v", "x0")


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()], ids=["cosine", "linear"])
@pytest.mark.parametrize("t_value", [0.1, 0.5, 0.9])
def test_q_sample_statistics_match_schedule(schedule, t_value):
    n = 100_000
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([-1.0, -0.2, 0.4, 1.0]).expand(n, 4)
    t = torch.full((n,), t_value)
    x_t = GaussianDiffusion(schedule).q_sample(x0, t, torch.randn(n, 4, generator=g))
    alpha, sigma = (v.item() for v in schedule.alpha_sigma(torch.tensor(t_value)))
    assert abs(alpha**2 + sigma**2 - 1) < 1e-6
    # 5 Monte-Carlo standard errors: sigma / sqrt(n) for the mean, sigma^2 sqrt(2 / n) for the variance.
    mean_err = (x_t.mean(0) - alpha * x0[0]).abs().max().item()
    var_err = (x_t.var(0) - sigma**2).abs().max().item()
    assert mean_err < 5 * sigma / math.sqrt(n), f"mean off by {mean_err}"
    assert var_err < 5 * sigma**2 * math.sqrt(2 / n), f"variance off by {var_err}"


def test_q_sample_broadcasts_t_over_image_dims():
    diffusion = GaussianDiffusion(CosineSchedule())
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = diffusion.q_sample(x0, t, noise)
    for i in range(3):
        alpha, sigma = diffusion.schedule.alpha_sigma(t[i])
        torch.testing.assert_close(x_t[i], alpha * x0[i] + sigma * noise[i])


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    diffusion = GaussianDiffusion(CosineSchedule(), prediction)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = 0.05 + 0.9 * torch.rand(6, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, eps_hat = diffusion.to_x0_eps(diffusion.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=1e-5)


def test_v_target_formula():
    diffusion = GaussianDiffusion(CosineSchedule(), "v")
    x0, noise, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0.3])
    alpha, sigma = diffusion.schedule.alpha_sigma(t)
    torch.testing.assert_close(diffusion.target(x0, noise, t).reshape(1), 2 * alpha - sigma)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss(prediction):
    diffusion = GaussianDiffusion(LinearSchedule(), prediction)
    x0 = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = {}

    def oracle(x_t, t, text_embeds):  # knows the noise, so it can return the exact target
        seen["kwarg"] = text_embeds
        return diffusion.target(x0, noise, t)

    noise = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    loss, t = diffusion.training_loss(
        oracle, x0, noise=noise, generator=torch.Generator().manual_seed(3), text_embeds="E"
    )
    assert seen["kwarg"] == "E"
    assert loss.shape == (5,) and loss.dtype == torch.float32 and t.shape == (5,)
    torch.testing.assert_close(loss, torch.zeros(5), rtol=0, atol=1e-10)
    assert ((t >= 0) & (t < 1)).all()

    zero = lambda x_t, t: torch.zeros_like(x_t)
    loss, _ = diffusion.training_loss(zero, x0, t=t, noise=noise)
    expected = diffusion.target(x0, noise, t).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_training_loss_is_seeded_and_checks_shapes():
    diffusion = GaussianDiffusion(CosineSchedule())
    x0 = torch.randn(4, 3, 4, 4)
    model = lambda x_t, t: 0.5 * x_t
    a = diffusion.training_loss(model, x0, generator=torch.Generator().manual_seed(7))
    b = diffusion.training_loss(model, x0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"model output shape \(4, 1, 4, 4\) must equal x0's \(4, 3, 4, 4\)"):
        diffusion.training_loss(lambda x_t, t: x_t[:, :1], x0)


def test_sample_t_is_uniform():
    n = 100_000
    t = GaussianDiffusion(CosineSchedule()).sample_t(n, generator=torch.Generator().manual_seed(0))
    assert t.shape == (n,) and t.min() >= 0 and t.max() < 1
    # 4 standard errors: sqrt(1 / 12 / n) for the mean, sqrt(p (1 - p) / n) for each decile's mass.
    assert abs(t.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    deciles = torch.histc(t, bins=10, min=0, max=1) / n
    assert (deciles - 0.1).abs().max() < 4 * math.sqrt(0.09 / n)


def test_unknown_prediction():
    with pytest.raises(ValueError, match="unknown prediction 'score'; choose one of eps, v, x0"):
        GaussianDiffusion(CosineSchedule(), "score")


class CountingNet:
    def __init__(self):
        self.calls = 0

    def __call__(self, x_t, t, text_embeds):
        self.calls += 1
        return torch.tanh(x_t) + text_embeds.mean() * t[:, None, None, None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim, dpmpp_2m"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"guidance_weight": -0.5}, "guidance_weight must be >= 0, got -0.5"),
        ({"thresholding": "clip"}, "unknown thresholding mode 'clip'; choose one of none, static, dynamic"),
        ({"percentile": 1.5}, r"percentile must be in \(0, 1\]"),
        ({"sampler": "ddim", "eta": -1.0}, "eta must be >= 0"),
        ({"sampler": "ddpm", "eta": 0.5}, "eta=0.5 has no meaning for sampler 'ddpm'"),
        ({"sampler": "dpmpp_2m", "eta": 1.0}, "eta=1.0 has no meaning for sampler 'dpmpp_2m'"),
    ],
)
def test_sample_rejects_bad_input_before_any_work(kwargs, message):
    net = CountingNet()
    cond = {"text_embeds": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=message):
        GaussianDiffusion(CosineSchedule()).sample(net, torch.randn(2, 3, 4, 4), cond=cond, **kwargs)
    assert net.calls == 0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_sample_shape_dtype_seed_and_callback(sampler):
    diffusion = GaussianDiffusion(CosineSchedule(), "v")
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    cond, null_cond = {"text_embeds": torch.ones(2, 3)}, {"text_embeds": torch.zeros(2, 3)}
    seen = []

    def run(callback=None):
        net = CountingNet()
        out = diffusion.sample(
            net,
            noise,
            cond=cond,
            null_cond=null_cond,
            guidance_weight=3.0,
            sampler=sampler,
            steps=4,
            eta=1.0 if sampler == "ddim" else 0.0,  # eta is DDIM's knob only
            generator=torch.Generator().manual_seed(1),
            callback=callback,
        )
        assert net.calls == 4, "one batched network pass per step"
        return out

    out = run(callback=seen.append)
    assert out.shape == noise.shape and out.dtype == torch.bfloat16
    assert out.float().abs().max() <= 1.0 + 1e-2, "dynamic thresholding keeps the final x0 in [-1, 1]"
    torch.testing.assert_close(out, run(), rtol=0, atol=0)
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"i", "x", "t", "x0"} and seen[0]["t"].item() == 1.0
    assert seen[0]["x0"].shape == noise.shape


def test_sample_progress_bar_runs():
    diffusion = GaussianDiffusion(CosineSchedule())
    out = diffusion.sample(
        CountingNet(), torch.randn(1, 1, 2, 2), cond={"text_embeds": torch.ones(1, 3)}, steps=2, disable=False
    )
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_cuda_with_cpu_or_cuda_generator(generator_device):
    diffusion = GaussianDiffusion(CosineSchedule(), "v")
    x0 = torch.randn(4, 3, 8, 8, device="cuda")
    net = lambda x_t, t, text_embeds=None: torch.tanh(x_t) * t[:, None, None, None]
    loss, t = diffusion.training_loss(net, x0, generator=torch.Generator(generator_device).manual_seed(0))
    assert loss.device.type == "cuda" and t.device.type == "cuda"
    noise = torch.randn(4, 3, 8, 8, device="cuda", dtype=torch.bfloat16)
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        out = diffusion.sample(
            net,
            noise,
            cond={"text_embeds": torch.ones(4, 2, device="cuda")},
            null_cond={"text_embeds": torch.zeros(4, 2, device="cuda")},
            guidance_weight=2.0,
            sampler=sampler,
            steps=3,
            eta=1.0 if sampler == "ddim" else 0.0,  # eta is DDIM's knob only
            generator=torch.Generator(generator_device),
        )
        assert out.device.type == "cuda" and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
