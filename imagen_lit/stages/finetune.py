"""Fine-tuning: start a new run from trained weights (network and EMA) with a fresh optimizer, schedule and step
count, on whatever data the new run is given. Distinct from resume (ckpt_path), which continues a run exactly."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from imagen_lit.build import read_stage_checkpoint


def read_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The stage state dict (U-Net and EMA) of one exported cascade stage's folder (<cascade>/<stage>), or of a
    train.py checkpoint (a file, or a DeepSpeed checkpoint folder)."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else None
    if weights is not None and weights.is_file():
        from safetensors.torch import load_file

        return load_file(str(weights))
    checkpoint, _ = read_stage_checkpoint(path)
    return checkpoint["state_dict"]


class InitFrom(L.Callback):
    """Load the weights (and EMA) of `path` into the stage once it is built, before the first step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = read_init_weights(self.path)  # read up front: a bad path fails before any training work

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        own = pl_module.state_dict()
        if pl_module.ema is None:  # under DeepSpeed the EMA lives outside the module: load the network only
            self.state = {k: v for k, v in self.state.items() if not k.startswith("ema.")}
        missing, unexpected = sorted(set(own) - set(self.state)), sorted(set(self.state) - set(own))
        mismatched = [k for k in own if k in self.state and own[k].shape != self.state[k].shape]
        if missing or unexpected or mismatched:
            raise ValueError(f"init_from={self.path} does not fit this stage's U-Net: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}, other shapes {mismatched[:3]}; use the same unet config")
        pl_module.load_state_dict(self.state)
        self.state = {}  # not kept in memory for the rest of the run
