"""Crash safety: SIGKILL in the middle of a checkpoint write leaves the last good checkpoint intact, and the run
resumes from it; a truncated checkpoint gets an error that names the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import ROOT, TINY

# Runs train.py with torch.save wrapped: the N-th save writes half its bytes, flags it, then hangs.
WRAPPER = r"""
import io, os, runpy, sys, time
import torch
real_save, calls = torch.save, {"n": 0}
def save(obj, f, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["HANG_AT_SAVE"]):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: buf.tell() // 2])
        f.flush()
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def overrides(tmp: Path, *extra: str) -> list[str]:
    return [*TINY, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}",
            "callbacks.sample_grid.every_n_steps=1000", *extra]


def test_sigkill_mid_checkpoint_write_then_resume(tmp_path):
    wrapper = tmp_path / "hang_in_save.py"
    wrapper.write_text(WRAPPER)
    marker = tmp_path / "writing"
    # Saves: step 2 -> step_0000002.ckpt, last.ckpt; step 4 -> step_0000004.ckpt, last.ckpt (the 4th: killed).
    env = {**os.environ, "HANG_AT_SAVE": "4", "MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(wrapper), str(ROOT / "train.py"),
                             *overrides(tmp_path, "trainer.max_steps=100")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "training never reached the 4th checkpoint write"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    ckpt_dir = tmp_path / "run" / "checkpoints"
    partial = list(ckpt_dir.glob(".last.ckpt.*.tmp"))
    assert partial, "the interrupted write should have been going to a temp file"
    for ckpt in ckpt_dir.glob("*.ckpt"):  # every visible checkpoint is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"),
                              *overrides(tmp_path, "trainer.max_steps=6", f"ckpt_path={ckpt_dir / 'last.ckpt'}")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


def test_truncated_checkpoint_error_names_the_file(tmp_path, train_cfg):
    from train import train

    train(train_cfg)
    good = Path(train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides(tmp_path, f"ckpt_path={bad}")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "truncated.ckpt is corrupt or truncated" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
