"""Exact resume (CPU, deterministic): 2N steps straight and N + resume + N give identical weights and EMA weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagen_lit.checkpoint import read_checkpoint
from tests.conftest import TINY, compose_config
from train import train

# 48 scenes in 3 shards over 2 workers: worker 0 reads 2 shards (4 batches), worker 1 one (2 batches), so the
# 6-batch epoch ends with worker 1 exhausted. Resuming at step 5 crosses that point and the epoch boundary at 6.
# With a fixed epoch (as under DDP) of 5 batches, the workers take 3 and 2 from endless passes; resuming at step 3,
# when the next batch is worker 1's, checks the worker roles (and the epoch boundary at 5, and a second pass).
STEPS = 8
CASES = {"one pass": (5, []), "fixed epoch": (3, ["data.epoch_length=5"]),
         "muon": (5, ["stage.optimizer._target_=imagen_lit.stages.muon.Muon"])}


def run(tmp: Path, data: Path, *extra: str) -> dict[str, torch.Tensor]:
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "data.num_workers", "callbacks.model"))]
    cfg = compose_config("train", tmp, overrides + [
        f"paths.data_dir={data}", f"trainer.max_steps={STEPS}", "data.num_workers=2", "+trainer.deterministic=true",
        "callbacks.model_checkpoint.every_n_train_steps=1", *extra,
    ])
    train(cfg)
    return read_checkpoint(tmp / "checkpoints" / f"step_{STEPS:07d}.ckpt")["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bit_exact(tmp_path: Path, case: str):
    resume_at, extra = CASES[case]
    data = tmp_path / "data"
    straight = run(tmp_path / "straight", data, *extra)
    ckpt = tmp_path / "straight" / "checkpoints" / f"step_{resume_at:07d}.ckpt"
    resumed = run(tmp_path / "resumed", data, f"ckpt_path={ckpt}", *extra)
    assert set(straight) == set(resumed)
    assert any(k.startswith("ema.module.") for k in straight)
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    first_half = read_checkpoint(ckpt)["state_dict"]
    assert not torch.equal(first_half["unet.out.2.weight"], straight["unet.out.2.weight"])  # training moved on
