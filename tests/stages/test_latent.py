"""The latent base stage end to end: train.py trains a tiny autoencoder, then a tiny base stage on its latents, and
the checkpoint alone samples and evaluates images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagen_lit.build import load_stage
from sample import sample
from tests.conftest import compose_config
from train import train

DATA = ["data.synthetic.num_scenes=24", "data.synthetic.samples_per_shard=12", "data.batch_size=6",
        "data.num_workers=0", "data.shuffle_buffer=12", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "text_encoder.num_layers=1"]
AE = ["experiment=quickstart_autoencoder", "stage.autoencoder.channels=[8,16,16]", "trainer.max_steps=3",
      "stage.lr_scheduler.warmup_steps=1", *DATA]
LATENT = ["experiment=quickstart_latent", "unet.base_channels=16", "unet.block_channels=[16,32,32]",
          "unet.num_res_blocks=[1,1,1]", "stage.autoencoder.channels=[8,16,16]", "trainer.max_steps=2",
          "stage.lr_scheduler.warmup_steps=1", "stage.sampling.steps=2", "callbacks.sample_grid.every_n_steps=2",
          "callbacks.sample_grid.prompts=[a red circle]", "callbacks.model_checkpoint.every_n_train_steps=2", *DATA]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("latent")
    train(compose_config("train", root / "ae", AE + [f"paths.data_dir={shared_data_dir}"]))
    ae_ckpt = root / "ae" / "checkpoints" / "last.ckpt"
    train(compose_config("train", root / "base", LATENT + [f"stage.autoencoder_ckpt={ae_ckpt}",
                                                            f"paths.data_dir={shared_data_dir}"]))
    return ae_ckpt, root / "base" / "checkpoints" / "last.ckpt"


def test_the_autoencoder_stage_keeps_its_latents_at_unit_scale(runs):
    ae_ckpt, _ = runs
    state = torch.load(ae_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert float(state["latent_var"]) > 0
    assert float(state["autoencoder.latent_scale"]) == pytest.approx(float(state["latent_var"]) ** -0.5, rel=1e-5)


def test_the_latent_stage_diffuses_the_frozen_latents_and_samples_images(runs, tmp_path):
    ae_ckpt, base_ckpt = runs
    stage, encoder, _ = load_stage(base_ckpt)
    ae_state = torch.load(ae_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in stage.autoencoder.state_dict().items():  # the base's copy is the trained autoencoder's
        assert torch.equal(value, ae_state[f"autoencoder.{name}"])
    assert bool(stage.autoencoder_loaded) and not any(p.requires_grad for p in stage.autoencoder.parameters())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(stage.diffusion_target(images, {}), stage.autoencoder.encode(images))
    assert stage.unet.image_size == 8 and stage.unet.in_channels == stage.autoencoder.latent_channels == 4
    embeds, mask = encoder.encode(["a red circle", "two blue squares"])
    out = stage.generate(embeds, mask, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    cfg = compose_config("sample", tmp_path / "eval", [f"ckpt_path={base_ckpt}", "progress=false", "evaluate=true",
                                                       "eval.num_images=2", "eval.fid.feature=null"])
    result = sample(cfg)
    assert result["num_images"] == 2 and result["thresholding"] == "none"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["alignment/n_images"] == 2


def test_a_latent_stage_without_a_trained_autoencoder_refuses_to_train(tmp_path, shared_data_dir):
    cfg = compose_config("train", tmp_path, LATENT + [f"stage.autoencoder_ckpt={tmp_path}/missing.ckpt",
                                                      f"paths.data_dir={shared_data_dir}"])
    with pytest.raises(FileNotFoundError, match="train one with experiment=quickstart_autoencoder"):
        train(cfg)


def test_autoencoder_ceiling_scores_renders_and_their_reconstructions(runs):
    from experiments.autoencoder_ceiling import ceiling

    ae_ckpt, base_ckpt = runs
    result = ceiling(ae_ckpt, num_scenes=4)
    assert result["renders"]["overall"] == 1.0  # the scorer on true renders
    assert 0.0 <= result["reconstructions"]["overall"] <= 1.0 and result["reconstructions"]["mse"] > 0
    assert ceiling(base_ckpt, num_scenes=4)["reconstructions"] == result["reconstructions"]  # the base's frozen copy


def test_evaluation_with_fid_renders_the_reference_at_the_decoded_size(runs, tmp_path):
    """sample.py's FID reference is rendered at the stage's image_size (32: 8x8 latents x factor 4), not the U-Net's."""
    _, base_ckpt = runs
    stage, _, _ = load_stage(base_ckpt)
    assert stage.image_size == 32 and stage.unet.image_size == 8
    cfg = compose_config("sample", tmp_path / "eval", [f"ckpt_path={base_ckpt}", "progress=false", "evaluate=true",
                                                       "eval.num_images=2", "eval.fid.reference.num_images=4",
                                                       f"eval.fid.cache_dir={tmp_path / 'fid'}"])
    assert sample(cfg)["fidelity/domain_fid"] >= 0
