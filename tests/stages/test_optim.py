"""Learning-rate schedules: warmup, then constant or cosine decay to the end of the budget."""

import pytest
import torch

from imagen_lit.stages import linear_warmup, warmup_cosine


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_warms_up_peaks_and_ends_at_final_ratio():
    lrs = _lrs(lambda o: warmup_cosine(o, warmup_steps=10, total_steps=110, final_ratio=0.1), 111)
    assert lrs[0] == pytest.approx(0.2)  # (0 + 1) / 10 of the base 2.0
    assert lrs[9] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway through the decay
    assert lrs[110] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # never rises after warmup


def test_linear_warmup_stays_constant():
    lrs = _lrs(lambda o: linear_warmup(o, warmup_steps=4), 10)
    assert lrs[3:] == [pytest.approx(2.0)] * 7


def test_warmup_cosine_rejects_a_budget_shorter_than_warmup():
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        _lrs(lambda o: warmup_cosine(o, warmup_steps=10, total_steps=10), 1)


def test_muon_is_refused_under_deepspeed_and_adamw_is_not():
    from imagen_lit.stages.muon import Muon
    from imagen_lit.stages.optim import refuse_partitioned

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    with pytest.raises(ValueError, match="torch.optim.AdamW"):
        refuse_partitioned(Muon(model.parameters()), under_deepspeed=True)
    refuse_partitioned(Muon(model.parameters()), under_deepspeed=False)
    refuse_partitioned(torch.optim.AdamW(model.parameters()), under_deepspeed=True)
