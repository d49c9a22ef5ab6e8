"""experiment=world_gpu64 and its device check: the config, the carried float16 encoder, the script rehearsed on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from experiments.device_carry import half_precision_copy
from imagen_lit.text import FrozenTextEncoder
from tests.conftest import ROOT, compose_config
from tests.text.conftest import tiny_t5_dir  # noqa: F401  (a fixture)


def test_world_gpu64_is_the_world_recipe_at_64_on_a_gpu(tmp_path):
    """The paper's base layout at width 64 (~24M), shifted noise levels for 2x the pixels, the world's sampling."""
    from hydra.utils import instantiate

    cfg = compose_config("train", tmp_path, ["experiment=world_gpu64"])
    unet = instantiate(cfg.unet, text_dim=384)
    assert type(unet).__name__ == "UNet" and unet.image_size == 64 == cfg.data.resolution
    assert 20e6 < sum(p.numel() for p in unet.parameters()) < 30e6
    assert list(cfg.unet.attn_resolutions) == [32, 16, 8] and cfg.unet.token_position_dim == 32
    diffusion = instantiate(cfg.diffusion)
    assert diffusion.prediction == "v" and cfg.diffusion.loss_weighting == "min_snr"
    assert cfg.diffusion.schedule.shift == pytest.approx(2 * torch.log(torch.tensor(32 / 64)).item(), abs=1e-3)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.batch_size == 128 and cfg.stage.sampling.guidance_weight == 1.5
    assert cfg.stage.lr_scheduler.total_steps == cfg.trainer.max_steps == 4000
    assert cfg.trainer.max_time == "00:00:05:00"  # the device check's 15 minutes leave 5 for training


def test_half_precision_copy_halves_the_weights_and_keeps_the_encoding(tiny_t5_dir, tmp_path):  # noqa: F811
    dst = half_precision_copy(tiny_t5_dir, tmp_path / "half")
    src_file, dst_file = tiny_t5_dir / "model.safetensors", dst / "model.safetensors"
    assert {v.dtype for v in load_file(str(dst_file)).values()} == {torch.float16}
    assert dst_file.stat().st_size < 0.6 * src_file.stat().st_size
    assert (dst / "tokenizer.json").is_file() and (dst / "config.json").is_file()
    captions = ["a red circle", "four red squares and a green circle"]
    full, full_mask = FrozenTextEncoder(str(tiny_t5_dir)).encode(captions)
    half, half_mask = FrozenTextEncoder(str(dst)).encode(captions)
    assert half.dtype == torch.float32 and torch.equal(full_mask, half_mask)
    assert torch.allclose(full, half, atol=5e-3) and not torch.equal(full, half)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        half_precision_copy(tmp_path, tmp_path / "none")


def test_device_script_rehearsed_on_cpu(tiny_t5_dir, tmp_path):  # noqa: F811
    """experiments/gpu_world64.sh end to end with a tiny model on the CPU: what the GPU call would bring back."""
    carry = tmp_path / "carry"
    half_precision_copy(tiny_t5_dir, carry / "minilm-fp16")
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "CARRY": str(carry), "OUT": str(out), "RUN": str(run),
           "ENCODER_DEVICE": "cpu", "CURVE_SCENES": "2", "EVAL_SCENES": "2", "SAMPLE_ARGS": "eval.fid.feature=null"}
    tiny = ["trainer=cpu", "trainer.precision=32-true", "data.synthetic.num_scenes=16",
            "data.synthetic.samples_per_shard=16", "data.batch_size=4", "data.num_workers=0", "data.resolution=16",
            "unet.base_channels=16", "unet.head_dim=16", "unet.channel_mults=[1,2]", "unet.attn_resolutions=[8]",
            "unet.num_res_blocks=1", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
            "stage.lr_scheduler.warmup_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.sample_grid.every_n_steps=2", "callbacks.sample_grid.prompts=[a red circle]",
            "stage.sampling.steps=2", f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_world64.sh"), *tiny], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train.py exit 0" in (out / "env.txt").read_text()
    assert [row["step"] for row in json.loads((out / "curve.json").read_text())["run"]] == [1, 2]
    result = json.loads((out / "eval.json").read_text())
    assert result["num_images"] == 2 and result["guidance_weight"] == 1.5 and 0.0 <= result["alignment/overall"] <= 1
    assert (out / "eval_grid.png").is_file() and (out / "samples_final.png").is_file()


def test_the_carried_minilm_encodes_as_the_packaged_one(tmp_path):
    """device_carry.py's claim: the float16-stored MiniLM's token states are within 0.003 of the packaged weights'."""
    from imagen_lit.text import resolve_encoder_path

    dst = half_precision_copy(resolve_encoder_path("minilm"), tmp_path / "minilm-fp16")
    assert sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) < 48 * 2**20  # fits the 64 MiB a call carries
    captions = ["a red circle to the left of a blue square", "three green stars", "a purple hexagon above a star"]
    packaged, mask = FrozenTextEncoder("minilm").encode(captions)
    carried, carried_mask = FrozenTextEncoder(str(dst)).encode(captions)
    assert torch.equal(mask, carried_mask) and (packaged - carried).abs().max() < 3e-3
