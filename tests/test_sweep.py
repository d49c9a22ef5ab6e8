"""Hydra multirun: each job gets its own run dir and TensorBoard run; a failed job is reported, not fatal."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imagen_lit.sweep import safe_dirname
from tests.conftest import ROOT, TINY
from train import train


@pytest.fixture
def trained_ckpt(train_cfg):
    train(train_cfg)
    return train_cfg.paths.output_dir + "/checkpoints/last.ckpt"


def test_safe_dirname():
    assert safe_dirname("a=1,b=2") == "a=1,b=2"
    long = "x=" + "y" * 300
    short = safe_dirname(long)
    assert len(short) == 120 and short != safe_dirname(long + "z") and "/" not in safe_dirname("p=a/b")


def test_multirun_summary_survives_a_failed_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "stage.cond_drop_prob=2.0,0.1", *TINY,
         f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep_dir}",
         "callbacks.sample_grid.every_n_steps=1000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep summary (2 jobs, 1 not ok)" in proc.stdout + proc.stderr
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    (failed,) = [r for r in rows if "stage.cond_drop_prob=2.0" in r["overrides"].split()]
    (ok,) = [r for r in rows if "stage.cond_drop_prob=0.1" in r["overrides"].split()]
    assert failed["status"] == "failed" and "cond_drop_prob must be in [0, 1]" in failed["error"]
    assert ok["status"] == "ok" and float(ok["hp/final_loss"]) > 0
    # Job folders (and so TensorBoard runs) are named by their overrides, shortened to a legal file name.
    (job,) = [d for d in sweep_dir.iterdir() if d.name.startswith("1_")]
    assert job.name.startswith("1_+callbacks.throughput.window_size=2,") and len(job.name) <= 2 + 120
    assert "stage.cond_drop_prob=0.1" in (job / ".hydra" / "overrides.yaml").read_text()
    assert list((job / "tensorboard").glob("events.out.tfevents.*"))


def test_guidance_sweep_at_sampling_time(trained_ckpt, tmp_path):
    """sample.py -m over guidance weights x thresholding: one scored job each, summary.csv and the Pareto plot."""
    sweep_dir = tmp_path / "gsweep"
    weights, modes = ["1", "3", "5"], ["static", "dynamic"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "-m", f"ckpt_path={trained_ckpt}", "evaluate=true",
         f"guidance_weight={','.join(weights)}", f"thresholding={','.join(modes)}", "progress=false",
         "eval.num_images=6", "eval.fid.reference.num_images=12", "eval.fid.kid_subset_size=4",
         "eval.fid.kid_subsets=5", f"eval.fid.cache_dir={tmp_path / 'fid'}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    got = {(float(r["guidance_weight"]), r["thresholding"]) for r in rows}
    assert got == {(float(w), m) for w in weights for m in modes}  # no weight or mode dropped
    for r in rows:
        assert 0.0 <= float(r["alignment/overall"]) <= 1.0 and float(r["fidelity/domain_fid"]) >= 0.0
    assert (sweep_dir / "pareto.png").is_file()
    acc = EventAccumulator(str(sweep_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "guidance_pareto" in acc.Tags()["images"]
    assert len(acc.Scalars("sweep/dynamic/alignment/overall")) == len(weights)
    job = next(d for d in sweep_dir.iterdir() if d.name.startswith("0_"))
    assert list((job / "tensorboard").glob("events.out.tfevents.*")) and (job / "grid.png").is_file()


def test_submitit_local_sweep_writes_its_summary(tmp_path):
    """The cluster path: Hydra's submitit launcher (locally, subprocess jobs) runs a 2-job sweep into summary.csv."""
    sweep_dir = tmp_path / "submitit"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", "stage.cond_drop_prob=0.1,0.2", *TINY, f"paths.data_dir={tmp_path / 'data'}",
         f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep_dir}",
         "callbacks.sample_grid.every_n_steps=1000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    swept = sorted(o for r in rows for o in r["overrides"].split() if o.startswith("stage.cond_drop_prob="))
    assert swept == ["stage.cond_drop_prob=0.1", "stage.cond_drop_prob=0.2"]
    assert all(r["status"] == "ok" and float(r["hp/final_loss"]) > 0 for r in rows), rows
    assert list(sweep_dir.glob(".submitit/*/*_log.out"))  # the jobs ran through submitit


def test_the_readme_slurm_multinode_command_composes(tmp_path):
    """README's SLURM sweep: 2 nodes x 8 GPUs per job through the submitit launcher, without any '+'."""
    from tests.conftest import compose_config

    cfg = compose_config("train", tmp_path, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
                                             "trainer.devices=8", "trainer.num_nodes=2", "hydra.launcher.nodes=2"])
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 8
    assert cfg.hydra.launcher.nodes == 2 and "submitit" in cfg.hydra.launcher._target_
