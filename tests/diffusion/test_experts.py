import pytest
import torch

from imagen_lit.diffusion import CosineSchedule, GaussianDiffusion, LinearSchedule
from imagen_lit.diffusion.experts import switch_denoiser


@pytest.mark.parametrize("schedule", [CosineSchedule(), CosineSchedule(shift=-1.386), LinearSchedule()])
def test_t_at_inverts_the_log_snr(schedule):
    t = torch.linspace(0.02, 0.98, 49)
    log_snr = schedule.log_snr(t)
    torch.testing.assert_close(schedule.t_at(log_snr), t, atol=1e-5, rtol=0)


def test_an_expert_trains_on_its_own_log_snr_interval_only():
    diffusion = GaussianDiffusion(CosineSchedule(shift=-1.386), prediction="v", log_snr_range=[None, 0.0])
    t = diffusion.sample_t(20000, generator=torch.Generator().manual_seed(0))
    log_snr = diffusion.schedule.log_snr(t)
    assert log_snr.max() < 1e-4 and log_snr.min() < -15  # the whole noisy side, nothing cleaner than SNR 1
    # uniform in t over the interval: t = 0.2952 is where the shifted cosine crosses log-SNR 0
    assert abs(float(t.min()) - 0.2952) < 1e-3 and abs(float(t.mean()) - (0.2952 + 1) / 2) < 0.01
    clean = GaussianDiffusion(CosineSchedule(), log_snr_range=[0.0, None]).sample_t(2000)
    assert float(clean.max()) <= 0.5 + 1e-5 and float(CosineSchedule().log_snr(clean).min()) >= -1e-4
    assert GaussianDiffusion(CosineSchedule()).t_range == (0.0, 1.0)


@pytest.mark.parametrize("bad", [[1.0, 0.0], [0.0], "low", [30.0, 40.0]])
def test_a_bad_log_snr_range_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="log_snr_range"):
        GaussianDiffusion(CosineSchedule(), log_snr_range=bad)


def test_the_switch_calls_each_expert_on_its_levels_at_its_own_time():
    schedule, shifted = CosineSchedule(), CosineSchedule(shift=-1.386)
    calls = []

    def expert(name, sched):
        def denoise(x, t):
            calls.append((name, sched.log_snr(t)))
            return torch.full_like(x, 1.0 if name == "high" else -1.0)
        return denoise

    denoise = switch_denoiser(expert("low", schedule), expert("high", shifted), schedule, shifted, switch_log_snr=0.0)
    t = torch.tensor([0.2, 0.45, 0.55, 0.9])  # log-SNR > 0, > 0, < 0, < 0
    out = denoise(torch.zeros(4, 3, 2, 2), t)
    assert out[:, 0, 0, 0].tolist() == [-1.0, -1.0, 1.0, 1.0]
    (low_name, low_snr), (high_name, high_snr) = calls
    assert (low_name, high_name) == ("low", "high")
    # the high-noise expert sees the same log-SNR under its own (shifted) schedule, at another t
    torch.testing.assert_close(high_snr, schedule.log_snr(t[2:]), atol=1e-4, rtol=0)
    torch.testing.assert_close(low_snr, schedule.log_snr(t[:2]))
    calls.clear()
    denoise(torch.zeros(2, 3, 2, 2), torch.tensor([0.3, 0.3]))
    assert [c[0] for c in calls] == ["low"]  # a batch on one side calls one expert only
