"""train.py init_from=: a new run from trained weights and EMA, with a fresh optimizer and the step count from 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagen_lit.cascade import Cascade
from imagen_lit.checkpoint import read_checkpoint
from tests.conftest import TINY, compose_config
from train import train


@pytest.fixture
def trained(tmp_path, shared_data_dir) -> Path:
    cfg = compose_config("train", tmp_path / "first", TINY + [f"paths.data_dir={shared_data_dir}"])
    train(cfg)
    return tmp_path / "first" / "checkpoints" / "last.ckpt"


def _finetune(tmp_path: Path, shared_data_dir: Path, init: Path, *extra: str) -> dict:
    cfg = compose_config("train", tmp_path / "tuned", TINY + [
        f"paths.data_dir={shared_data_dir}", f"init_from={init}", "trainer.max_steps=2",
        "stage.optimizer.lr=0.0", "stage.lr_scheduler.warmup_steps=1", *extra])
    train(cfg)
    return read_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("source", ["checkpoint", "cascade_stage"])
def test_finetune_loads_weights_and_ema_with_a_fresh_optimizer(trained, tmp_path, shared_data_dir, source):
    first = read_checkpoint(trained)
    init = trained if source == "checkpoint" else Cascade.from_checkpoints([trained]).save(tmp_path / "c") / "base16"
    tuned = _finetune(tmp_path, shared_data_dir, init)
    assert tuned["global_step"] == 2  # counted from 0, not continued from the first run's 4
    adam = tuned["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 2 for s in adam.values())  # fresh AdamW moments: two steps' worth
    # lr 0: the weights cannot move, so they are exactly the loaded ones
    for key, value in first["state_dict"].items():
        if key.startswith("unet."):
            assert torch.equal(tuned["state_dict"][key], value), key
    # the EMA was loaded too and went on averaging: 4 updates from the first run, then 2 more
    assert int(tuned["state_dict"]["ema.num_updates"]) == int(first["state_dict"]["ema.num_updates"]) + 2 == 6


def test_init_from_and_ckpt_path_together_is_one_line(trained, tmp_path, shared_data_dir):
    cfg = compose_config("train", tmp_path / "both", TINY + [
        f"paths.data_dir={shared_data_dir}", f"init_from={trained}", f"ckpt_path={trained}"])
    with pytest.raises(ValueError, match="give init_from .* or ckpt_path .*, not both"):
        train(cfg)


def test_init_from_another_unet_is_one_line(trained, tmp_path, shared_data_dir):
    with pytest.raises(ValueError, match="does not fit this stage's U-Net"):
        _finetune(tmp_path, shared_data_dir, trained, "unet.base_channels=32")
