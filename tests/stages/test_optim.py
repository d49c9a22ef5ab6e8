"""Learning-rate schedules: warmup, then constant or cosine decay to the end of the budget."""

import math

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


class _FakeTimer:
    """Lightning's Timer as the budget clock sees it: seconds elapsed and remaining of the training stage."""

    def __init__(self, budget: float) -> None:
        self.budget, self.elapsed = budget, 0.0

    def time_elapsed(self) -> float:
        return self.elapsed

    def time_remaining(self) -> float:
        return self.budget - self.elapsed


def test_a_time_budgeted_cosine_follows_the_clock_when_time_runs_out_first():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=1000, time_budget=True)
    timer = _FakeTimer(budget=100.0)
    sched.budget_clock.timer = timer
    lrs = []
    for step in range(200):  # one second a step: the 100-second budget ends at step 100, long before step 1000
        timer.elapsed = float(step + 1)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[49] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 50 s of 100 spent
    assert lrs[99] == pytest.approx(0.0, abs=1e-12)  # the budget spent: the cosine has ended
    steps_only = _lrs(lambda o: warmup_cosine(o, warmup_steps=10, total_steps=1000), 51)
    assert steps_only[50] > 1.9  # without the clock, step 50 is near the top of a 1000-step cosine


def test_a_time_budgeted_cosine_follows_the_steps_when_they_run_out_first():
    with_clock = _lrs(lambda o: _with_timer(warmup_cosine(o, warmup_steps=10, total_steps=110, time_budget=True)),
                      111)
    assert with_clock == pytest.approx(_lrs(lambda o: warmup_cosine(o, warmup_steps=10, total_steps=110), 111))


def _with_timer(sched):
    sched.budget_clock.timer = _FakeTimer(budget=1e9)  # a budget the steps never approach
    return sched


def test_a_time_budget_without_trainer_max_time_is_refused_in_one_line():
    from types import SimpleNamespace

    from imagen_lit.stages.optim import attach_budget_clock

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    trainer = SimpleNamespace(callbacks=[], world_size=1)
    with pytest.raises(ValueError, match="needs trainer.max_time"):
        attach_budget_clock(warmup_cosine(opt, 10, 110, time_budget=True), trainer)
    attach_budget_clock(warmup_cosine(opt, 10, 110), trainer)  # a step budget needs no clock


def test_the_budget_clock_reads_the_timer_lightning_builds_from_max_time():
    import lightning as L

    from imagen_lit.stages.optim import attach_budget_clock

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, 10, 110, time_budget=True)
    trainer = L.Trainer(max_time="00:00:01:00", accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    attach_budget_clock(sched, trainer)
    assert sched.budget_clock.timer is not None and sched.budget_clock.fraction() == 0.0  # not started yet


def test_a_time_budgeted_schedule_checkpoints_its_steps_but_not_its_clock(tmp_path):
    """The clock holds a live Timer: it stays out of the state (which loads with weights_only), and a restored
    schedule keeps its own clock and step count."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, 10, 110, time_budget=True)
    sched.budget_clock.timer = _FakeTimer(budget=100.0)
    for _ in range(20):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    state = torch.load(tmp_path / "sched.pt", weights_only=True)
    assert "budget_clock" not in state and state["last_epoch"] == 20
    restored = warmup_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 10, 110, time_budget=True)
    restored.load_state_dict(state)
    assert restored.last_epoch == 20 and restored.budget_clock is not None and restored.budget_clock.timer is None
