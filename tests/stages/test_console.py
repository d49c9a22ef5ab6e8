"""What a run prints: the progress bar's description, the silenced notices (only those), the EMA's eval mode."""

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from imagen_lit.stages.console import (
    StageSummary,
    StepProgressBar,
    console_callbacks,
    expect_eval_modules,
    quiet_library_notices,
)


class _Trainer:
    def __init__(self, max_epochs):
        self.max_epochs = max_epochs


@pytest.mark.parametrize(("max_epochs", "expected"), [(-1, "Epoch 3"), (5, "Epoch 3/4")])
def test_progress_bar_reads_epoch_without_a_negative_total(max_epochs, expected):
    bar = StepProgressBar()
    bar._trainer = _Trainer(max_epochs)
    assert bar._get_train_description(3).strip() == expected


def test_only_the_named_library_notices_are_silenced():
    quiet_library_notices()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_notices()  # after simplefilter: the filters go back on top
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning,
                               "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning,
                               "mine.py", 1, module="imagen_lit.mine")
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated"]
    record = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0,
                               "Tip: try installing [litlogger](...)", None, None)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert not all(f.filter(record) for f in logger.filters)
    assert len(logger.filters) == len({type(f) for f in logger.filters})  # installed once


def test_eval_mode_warning_is_silenced_for_the_ema_count_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        expect_eval_modules(7)
        for n in (7, 8):
            warnings.warn(f"Found {n} module(s) in eval mode at the start of training. This may lead to ...",
                          stacklevel=1)
    assert [str(w.message)[:8] for w in caught] == ["Found 8 "]


def test_console_callbacks_follow_the_trainer_switches():
    on = console_callbacks(OmegaConf.create({}))
    assert [type(c) for c in on] == [StepProgressBar, StageSummary]
    assert console_callbacks(OmegaConf.create({"enable_progress_bar": False, "enable_model_summary": False})) == []


def test_summary_has_no_flop_line(capsys):
    data = [("Name", ["unet", "ema"]), ("Type", ["EfficientUNet", "EMA"]), ("Params", ["9.9 M", "9.9 M"]),
            ("Mode", ["train", "train"]), ("FLOPs", ["0", "0"])]
    StageSummary.summarize(data, 20_000_000, 10_000_000, 80.0, {"train": 5, "eval": 3}, 0)
    out = capsys.readouterr().out
    assert "FLOPs" not in out and "eval mode: 3 (the EMA copy)" in out and "EfficientUNet" in out


def test_the_budget_line_names_the_time_budget_the_cosine_spans():
    from imagen_lit.stages.console import describe_budget

    assert describe_budget({"max_steps": 3000, "max_time": "00:00:07:00"}, {"time_budget": True}) == (
        "for 00:00:07:00 (the learning-rate cosine spans this time budget; at most 3000 steps)")
    assert describe_budget({"max_steps": 5800, "max_time": "00:01:00:00"}, {"time_budget": False}) == (
        "for 5800 steps (a 00:01:00:00 guard)")
    assert describe_budget({"max_steps": 4, "max_time": None}, None) == "for 4 steps"
