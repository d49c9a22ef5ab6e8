"""End to end: train.py trains a tiny config and sample.py samples from its checkpoint, in a tmp dir."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments.colour_fidelity import from_grid
from imagen_lit.data import write_synthetic_shards
from sample import sample
from tests.conftest import ROOT, compose_config
from train import train


def events(run_dir: Path) -> EventAccumulator:
    """The run's TensorBoard event files, read with tensorboard's own reader."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """All scalars of the run."""
    acc = events(run_dir)
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def trained(train_cfg):
    train(train_cfg)
    return Path(train_cfg.paths.output_dir)


def sample_cfg(tmp_path: Path, ckpt: Path | str, *extra: str):
    return compose_config("sample", tmp_path / "samples", [f"ckpt_path={ckpt}", "progress=false", *extra])


def test_train_then_sample(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert (trained / "samples" / "final.png").is_file()
    assert (trained / "samples" / "step_0000002.png").is_file()
    prompts, tiles, sampling = from_grid(trained / "samples", "final")
    assert prompts == ["a red circle"] and tiles.shape == (1, 16, 16, 3) and sampling["steps"] == 2
    logged = scalars(trained)
    assert len(logged["train/loss"]) == 4 and all(v == v for v in logged["train/loss"])
    assert "lr-AdamW" in logged and len(logged["train/grad_norm"]) == 4
    assert any(tag.startswith("train/loss_t0.") for tag in logged)  # per noise-level bucket
    assert "train/device/samples_per_sec" in logged
    assert logged["hp/final_loss"][-1] == pytest.approx(logged["train/loss"][-1])
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["hp/final_loss"] == pytest.approx(logged["train/loss"][-1])

    acc = events(trained)
    assert acc.Tags()["images"] == ["samples"]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "text_encoder:" in config_text and "num_layers: 1" in config_text
    hparams = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
        if data.HasField("experiment"):
            assert [m.name.tag for m in data.experiment.metric_infos] == ["hp/final_loss"]
    assert hparams["unet/base_channels"].number_value == 16

    cfg = sample_cfg(tmp_path, ckpt, "num_images=3", "prompts=[a red circle,a blue star]", "sampler=ddim",
                     "steps=2", "guidance_weight=2.0", "thresholding=static", "seed=5")
    out = sample(cfg)
    meta = json.loads((out / "samples.json").read_text())
    assert len(meta["images"]) == 6 and meta["sampling"]["sampler"] == "ddim"
    assert meta["sampling"]["guidance_weight"] == 2.0
    first = Image.open(out / meta["images"][0]["file"])
    assert first.size == (16, 16) and Image.open(out / "grid.png").size[0] > 16 * 3
    # Same seed, same pixels.
    again = sample(sample_cfg(tmp_path / "again", ckpt, "num_images=3", "prompts=[a red circle,a blue star]",
                              "sampler=ddim", "steps=2", "guidance_weight=2.0", "thresholding=static", "seed=5"))
    assert (again / "images" / "00004.png").read_bytes() == (out / "images" / "00004.png").read_bytes()
    # An interval holding every step's t guides every step: the same pixels, the interval recorded as a list.
    interval = sample(sample_cfg(tmp_path / "interval", ckpt, "num_images=3", "prompts=[a red circle,a blue star]",
                                 "sampler=ddim", "steps=2", "guidance_weight=2.0", "thresholding=static", "seed=5",
                                 "guidance_interval=[0.0,1.0]"))
    assert json.loads((interval / "samples.json").read_text())["sampling"]["guidance_interval"] == [0.0, 1.0]
    assert (interval / "images" / "00004.png").read_bytes() == (out / "images" / "00004.png").read_bytes()


def test_sample_with_noise_level_experts(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    args = ["num_images=2", "prompts=[a red circle]", "sampler=ddim", "steps=2", "seed=5"]
    plain = sample(sample_cfg(tmp_path / "plain", ckpt, *args))
    # A hand-over below every level leaves the low-noise expert (ckpt_path) to sample alone: the same pixels.
    pair = sample(sample_cfg(tmp_path / "pair", ckpt, *args, f"experts.high_noise={ckpt}",
                             "experts.switch_log_snr=-100", "experts.high_noise_sampling.guidance_weight=4.0"))
    assert (pair / "images" / "00001.png").read_bytes() == (plain / "images" / "00001.png").read_bytes()
    sampling = json.loads((pair / "samples.json").read_text())["sampling"]
    assert sampling["switch_log_snr"] == -100 and sampling["high_noise"]["guidance_weight"] == 4.0


def test_resume_continues_the_step_count(trained, tmp_path, shared_data_dir):
    from tests.conftest import TINY

    cfg = compose_config("train", tmp_path / "resumed", TINY + [
        f"paths.data_dir={shared_data_dir}", "trainer.max_steps=6",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
    ])
    train(cfg)
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6


def test_a_run_that_stops_between_periodic_saves_checkpoints_its_last_step(tmp_path, shared_data_dir):
    """max_time, an early stop or a step budget off the save period: last.ckpt is the final step, not the one before."""
    from tests.conftest import TINY

    cfg = compose_config("train", tmp_path / "run", TINY + [f"paths.data_dir={shared_data_dir}", "trainer.max_steps=3",
                                                            "callbacks.sample_grid=null"])
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*.ckpt")) == ["step_0000002.ckpt", "step_0000003.ckpt"]
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3


def test_resume_automatically_from_the_run_folder(trained, shared_data_dir, caplog):
    """ckpt_path=last in the same run folder (hydra.run.dir=<run>) picks up its last checkpoint by itself."""
    from tests.conftest import TINY

    cfg = compose_config("train", trained, TINY + [f"paths.data_dir={shared_data_dir}", "trainer.max_steps=6",
                                                   "ckpt_path=last"])
    with caplog.at_level("INFO"):
        train(cfg)
    assert f"Restored all states from the checkpoint at {trained / 'checkpoints' / 'last.ckpt'}" in caplog.text
    state = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["prompts=[]"], ValueError, "no prompts"),
        (["sampler=euler_a"], ValueError, "unknown sampler"),
        (["guidance_weight=-1"], ValueError, "guidance_weight must be >= 0"),
        (["thresholding=soft"], ValueError, "thresholding"),
        (["guidance_interval=[0.8,0.2]"], ValueError, "guidance_interval must satisfy"),
        (["experts.high_noise=x.ckpt", "stages=[a.ckpt,b.ckpt]"], ValueError, "experts.high_noise pairs with one"),
        ([], FileNotFoundError, "checkpoint not found"),
    ],
)
def test_sample_bad_input(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        sample(sample_cfg(tmp_path, tmp_path / "missing.ckpt", *overrides))


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        sample(sample_cfg(tmp_path, bad))


def test_missing_shards_fail_before_training(train_cfg):
    with open_dict(train_cfg):
        train_cfg.data.synthetic = None
        train_cfg.data.shards = "/nonexistent/shard-{000000..000003}.tar"
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        train(train_cfg)


def _corrupt(shard: Path) -> None:
    """Replace the first sample's png with garbage and drop the second sample's caption."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    keys = sorted({m.name.split(".")[0] for m, _ in members})
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            key, ext = m.name.split(".", 1)
            if key == keys[1] and ext == "txt":
                continue
            if key == keys[0] and ext == "png":
                data = b"\x89PNG garbage" * 10
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_corrupt_samples_are_skipped_and_counted(train_cfg, tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", num_scenes=32, resolution=16, seed=3, samples_per_shard=16)
    _corrupt(Path(shards[0]))
    with open_dict(train_cfg):
        train_cfg.data.synthetic = None
        train_cfg.data.shards = str(tmp_path / "shards" / "*.tar")
        train_cfg.trainer.max_steps = -1
        train_cfg.trainer.max_epochs = 1
    with pytest.warns(UserWarning):
        train(train_cfg)
    logged = scalars(Path(train_cfg.paths.output_dir))
    assert logged["data/skipped_samples"][-1] == 2
    assert len(logged["train/loss"]) == 4  # 30 good samples at batch 8: 3 full batches and one of 6


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("sample.py", ["ckpt_path=/nonexistent/last.ckpt"], "checkpoint not found"),
        ("sample.py", ["ckpt_path=x.ckpt", "guidance_weight=-2"], "guidance_weight must be >= 0"),
        ("train.py", ["data=webdataset", "data.shards='/nonexistent/{0..3}.tar'"], "nonexistent"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, script, args, message):
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_quickstart_config_builds(tmp_path):
    """The README's main job composes and builds: Efficient U-Net, v-prediction, guidance 5."""
    from hydra.utils import instantiate

    cfg = compose_config("train", tmp_path, ["experiment=quickstart"])
    unet = instantiate(cfg.unet, text_dim=384)
    diffusion = instantiate(cfg.diffusion)
    assert type(unet).__name__ == "EfficientUNet" and unet.image_size == 32
    assert diffusion.prediction == "v" and cfg.stage.sampling.guidance_weight == 5.0
    assert sum(p.numel() for p in unet.parameters()) < 20e6


def test_world_config_samples_at_its_measured_guidance_weight(tmp_path):
    """experiment=world stores w = 1.5 (its best on 500 held-out scenes); the quickstart keeps 5."""
    world = compose_config("train", tmp_path, ["experiment=world"])
    assert world.stage.sampling.guidance_weight == 1.5 and world.trainer.max_steps == 10000
    assert compose_config("train", tmp_path, ["experiment=quickstart"]).stage.sampling.guidance_weight == 5.0


def test_muon_and_adamw_recipes_differ_only_in_the_optimizer_and_the_budget(tmp_path):
    """experiment=quickstart / world_muon run Muon at its measured lr with fewer steps for its dearer step (the
    quickstart's cosine spans its 7-minute budget); quickstart_adamw / world keep the AdamW recipe their committed
    results were measured with, its cosine over its steps."""
    for name, plain_name, steps, lr, time_budget in (("quickstart", "quickstart_adamw", 3000, 2e-3, True),
                                                     ("world_muon", "world", 5800, 1e-3, False)):
        muon, plain = (compose_config("train", tmp_path, [f"experiment={n}"]) for n in (name, plain_name))
        assert muon.stage.optimizer._target_ == "imagen_lit.stages.muon.Muon"
        assert plain.stage.optimizer._target_ == "torch.optim.AdamW" and plain.stage.optimizer.lr == 1e-3
        assert muon.stage.optimizer.lr == lr and muon.trainer.max_steps == steps
        assert muon.stage.lr_scheduler.time_budget is time_budget and plain.stage.lr_scheduler.time_budget is False
        assert muon.trainer.max_time == plain.trainer.max_time and muon.unet == plain.unet
        assert muon.stage.lr_scheduler.total_steps == steps
        assert muon.data == plain.data and muon.diffusion == plain.diffusion
    for name in ("quickstart_latent", "world_gpu64", "experts_low"):   # measured with AdamW: pinned
        cfg = compose_config("train", tmp_path, [f"experiment={name}", "stage.autoencoder_ckpt=x"] if "latent" in name
                             else [f"experiment={name}"])
        assert cfg.stage.optimizer._target_ == "torch.optim.AdamW", name


def test_the_expert_configs_split_the_noise_range_at_snr_1(tmp_path):
    """experts_high_mix trains on log-SNR < 0 and experts_low on >= 0, so the pair's default hand-over (0) gives each
    level to the expert trained on it; the high-noise one keeps the relation phase's loss."""
    from hydra.utils import instantiate

    high = compose_config("train", tmp_path, ["experiment=experts_high_mix", "init_from=x.ckpt"])
    low = compose_config("train", tmp_path, ["experiment=experts_low"])
    high_diffusion, low_diffusion = instantiate(high.diffusion), instantiate(low.diffusion)
    assert high_diffusion.log_snr_range == (None, 0.0) and low_diffusion.log_snr_range == (0.0, None)
    assert high_diffusion.multiscale_weights == [1.0, 2.0, 4.0] and high.diffusion.schedule.shift == -1.386
    assert low_diffusion.multiscale_weights == [1.0] and low.diffusion.schedule.shift == 0.0
    assert dict(high.data.synthetic.kinds) == {"single": 0.05, "counting": 0.25, "binding": 0.1, "spatial": 0.6}
    relation_phase = compose_config("train", tmp_path, ["experiment=experts_high"])
    assert relation_phase.data.synthetic.kinds == {"spatial": 1.0}
    assert instantiate(relation_phase.diffusion).log_snr_range == (None, 0.0)
    assert high.unet.token_position_dim == low.unet.token_position_dim == 32
    assert compose_config("sample", tmp_path, []).experts.switch_log_snr == 0.0


def test_drawbench_grids_per_category(trained, tmp_path):
    out = sample(sample_cfg(tmp_path, trained / "checkpoints" / "last.ckpt", "drawbench=Rare Words",
                            "num_images=2", "steps=1"))
    meta = json.loads((out / "samples.json").read_text())
    assert len(meta["images"]) == 14 and {r["category"] for r in meta["images"]} == {"Rare Words"}
    grid = Image.open(out / "drawbench" / "Rare_Words.png")
    assert grid.size == (2 * 20, 7 * 20)  # 7 prompts x 2 images of 16 px with 2 px padding
    with pytest.raises(ValueError, match="unknown DrawBench category"):
        sample(sample_cfg(tmp_path / "bad", trained / "checkpoints" / "last.ckpt", "drawbench=Nope"))


def test_a_time_budgeted_schedule_without_max_time_fails_in_one_line(train_cfg):
    with open_dict(train_cfg):
        train_cfg.stage.lr_scheduler = {"_target_": "imagen_lit.stages.warmup_cosine", "_partial_": True,
                                        "warmup_steps": 1, "total_steps": 4, "time_budget": True}
        train_cfg.trainer.max_time = None
    with pytest.raises(ValueError, match="needs trainer.max_time"):
        train(train_cfg)


def test_a_time_budgeted_schedule_trains_under_max_time(train_cfg):
    with open_dict(train_cfg):
        train_cfg.stage.lr_scheduler = {"_target_": "imagen_lit.stages.warmup_cosine", "_partial_": True,
                                        "warmup_steps": 1, "total_steps": 4, "time_budget": True}
        train_cfg.trainer.max_time = "00:00:10:00"
    train(train_cfg)
    from imagen_lit.checkpoint import read_checkpoint

    state = read_checkpoint(Path(train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4  # the steps ran out first; the clock only ever shortens the cosine
