"""What a training run prints: a progress bar that counts steps, a model summary without the FLOP count it cannot
make, and only the library notices that concern the run (each one silenced here is named and matched narrowly)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback, RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

# Lightning notices that say nothing about this run: an advert, a note that our own summary replaced its default,
# torch deprecations inside Lightning's own code, and a mid-epoch resume warning that is untrue here (the
# datamodule's state_dict holds every rank's data position and replays the epoch to it; tests/test_resume_exact.py).
_LIBRARY_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    (r"Precision .* is not supported by the model summary", r"lightning\.pytorch\.utilities\.model_summary"),
    (r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
     r"lightning\.pytorch\.loops\.training_epoch_loop"),
)
_ADVERTS = ("litlogger", "Skipping setting a default `ModelSummary` callback")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(word in record.getMessage() for word in _ADVERTS)


def quiet_library_notices() -> None:
    """Silence the Lightning notices above, by message and issuing module; every other warning still shows."""
    for message, module in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())


def expect_eval_modules(count: int) -> None:
    """Lightning warns when modules are in eval mode at fit start; the EMA copy is, by design. Only that exact count
    is silenced, so any other module left in eval mode still raises the warning."""
    warnings.filterwarnings("ignore", message=rf"Found {count} module\(s\) in eval mode at the start of training")


class StepProgressBar(RichProgressBar):
    """Rich progress bar that reads 'Epoch 3' for step-budgeted runs, not 'Epoch 3/-2' (max_epochs = -1)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"


class StageSummary(RichModelSummary):
    """The model summary, with the EMA's eval mode explained and no 'Total FLOPs: 0' (Lightning counts FLOPs only
    with an example_input_array; the stage counts them on the first batch for the ThroughputMonitor)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = dict(summary_data)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name in ("Name", "Type", "Params", "Mode"):
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(*(columns[name] for name in ("Name", "Type", "Params", "Mode")), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(f"Trainable params: {get_human_readable_count(trainable_parameters)}   "
                      f"frozen (the EMA copy): {get_human_readable_count(frozen)}   "
                      f"size: {model_size:.1f} MB   "
                      f"modules in eval mode: {total_training_modes['eval']} (the EMA copy)")



def console_callbacks(trainer_cfg: Any) -> list[Callback]:
    """The progress bar and model summary above, where the trainer config enables them (both on by default)."""
    out: list[Callback] = []
    if trainer_cfg.get("enable_progress_bar", True):
        out.append(StepProgressBar())
    if trainer_cfg.get("enable_model_summary", True):
        out.append(StageSummary())
    return out


def describe_budget(trainer_cfg: Any, lr_scheduler_cfg: Any) -> str:
    """The run's budget in one phrase: a step count, its time guard, or the time budget the cosine spans."""
    steps, max_time = trainer_cfg.get("max_steps"), trainer_cfg.get("max_time")
    if lr_scheduler_cfg is not None and lr_scheduler_cfg.get("time_budget"):
        return f"for {max_time} (the learning-rate cosine spans this time budget; at most {steps} steps)"
    return f"for {steps} steps" + (f" (a {max_time} guard)" if max_time else "")
