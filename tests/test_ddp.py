"""DDP on CPU: 2 processes on the gloo backend read disjoint shards and hold identical gradients after a step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.data.data_testing import image_bytes, write_tar

pytestmark = pytest.mark.slow  # ~1-2 min: two processes each build the encoder, data and model


def test_two_gloo_ranks_read_disjoint_shards_and_agree_on_gradients(tmp_path: Path):
    probe = tmp_path / "probe"
    # 64 scenes in 4 shards of 16; batch 8 per rank: one epoch is exactly 4 steps on each of the 2 ranks.
    overrides = [o for o in TINY if not o.startswith(("data.synthetic.num_scenes", "trainer.max_steps"))] + [
        "data.synthetic.num_scenes=64", "trainer.max_steps=4", "data.shuffle_buffer=8",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "callbacks.sample_grid=null", "callbacks.model_checkpoint=null", "trainer.enable_checkpointing=false",
        "+callbacks.probe._target_=tests.ddp_probe.DdpProbe", f"+callbacks.probe.out_dir={probe}",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["keys"]) for r in ranks]
    assert all(len(r["keys"]) == 32 == len(s) for r, s in zip(ranks, seen, strict=True))  # none twice on a rank
    assert not seen[0] & seen[1]  # no sample on both ranks within the epoch
    assert len(seen[0] | seen[1]) == 64  # and none lost
    # Different noise per rank (the zero-initialised output makes the first eps loss depend on the noise alone)...
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"]
    torch.testing.assert_close(ranks[0]["first_grads"], ranks[1]["first_grads"])  # ...and all-reduced gradients
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"])  # and identical weights after 4 steps


@pytest.mark.parametrize("budget", ["trainer.max_epochs=2", "trainer.max_steps=7"])
def test_uneven_shards_end_together_on_both_ranks(tmp_path: Path, budget: str):
    """3 shards of 5, 13 and 22 samples on 2 ranks: a pass gives the ranks 27 and 13 samples, or 35 and 5, yet both
    take ceil(40 / (2 x 4)) = 5 full batches per epoch and the run ends (rather than one rank waiting forever)."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for s, n in enumerate((5, 13, 22)):
        write_tar(shards / f"u-{s}.tar", [{"__key__": f"k{s}-{i}", "png": image_bytes((16, 16)), "txt": "a red circle"}
                                          for i in range(n)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    encode = subprocess.run([sys.executable, "-m", "imagen_lit.text.precompute", f"shards={shards}",
                             "text_encoder.num_layers=1", f"hydra.run.dir={tmp_path / 'encode'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert encode.returncode == 0, encode.stderr[-3000:]
    probe = tmp_path / "probe"
    overrides = [o for o in TINY if not o.startswith(("data.", "trainer.max_steps"))] + [
        "data=webdataset", f"data.shards={shards}", "data.resolution=16", "data.batch_size=4", "data.num_workers=0",
        "data.shuffle_buffer=8", budget, *(["trainer.max_steps=-1"] if "epochs" in budget else []),
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "callbacks.sample_grid.every_n_steps=100", "callbacks.model_checkpoint=null",
        "trainer.enable_checkpointing=false",
        "+callbacks.probe._target_=tests.ddp_probe.DdpProbe", f"+callbacks.probe.out_dir={probe}",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=400)  # a rank left waiting at a collective would hang here
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2)]
    steps = 10 if "epochs" in budget else 7
    assert [len(r["keys"]) for r in ranks] == [4 * steps] * 2  # full batches, as many on each rank
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"])
    # The captions were cached beforehand: only rank 0 loads the encoder, for the sample grid's prompts.
    assert [r["encoder_loads"] for r in ranks] == [1, 0]
    assert (tmp_path / "run" / "samples" / "final.png").is_file()  # every rank sampled them
