"""Per-rank torch RNG streams of a training run: distinct on every rank, saved by all ranks in the checkpoint and
restored at the first step after a resume, so noise, t and caption dropout continue exactly."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch import Tensor

RNG_STATES_KEY = "rng_states"


def rng_states() -> dict[str, Tensor]:
    """This process's torch RNG states: CPU, and the current CUDA device's when there is one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict[str, Tensor]) -> None:
    """Set the states saved by rng_states()."""
    torch.set_rng_state(states["cpu"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())


class RankRng:
    """What a stage does with the global RNG at fit start, at each step's start and in its checkpoint hooks."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] | None = None  # every rank's states from the checkpoint, not yet set

    def on_fit_start(self, module: L.LightningModule) -> None:
        if module.trainer.world_size > 1 and self.pending is None:
            # seed_everything gives every rank the same seed: without an offset all ranks would draw the same t and
            # noise each step, and the global batch would hold world_size copies of one noise draw.
            torch.manual_seed(torch.initial_seed() + module.global_rank)

    def on_train_batch_start(self, module: L.LightningModule) -> None:
        if self.pending is not None:
            # Restored here, not in on_load_checkpoint: creating the resumed run's data iterator draws from the
            # global RNG, which the uninterrupted run did at the start of the epoch, before the saved state.
            restore_rng_states(self.pending[module.global_rank])
            self.pending = None

    def save(self, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_STATES_KEY] = self.gather(module)

    def load(self, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_STATES_KEY)
        if states is not None and len(states) == module.trainer.world_size:
            self.pending = states
        elif states is not None:
            warnings.warn(f"checkpoint holds RNG states of {len(states)} ranks, this run has "
                          f"{module.trainer.world_size}: noise and t restart from fresh per-rank seeds", stacklevel=2)

    @staticmethod
    def gather(module: L.LightningModule) -> list[dict[str, Any]]:
        """Every rank's torch RNG states (CPU and CUDA), gathered so that rank 0's checkpoint holds them all."""
        state = rng_states()
        if module._trainer is None or module.trainer.world_size == 1:
            return [state]
        gathered = {}
        for key in ("cpu", "cuda"):
            if key in state:  # (world, n) uint8 on the collective's device, back on CPU per rank
                stacked = module.all_gather(state[key].to(module.device))
                gathered[key] = [t.cpu() for t in stacked]
        return [{k: v[r] for k, v in gathered.items()} for r in range(module.trainer.world_size)]
