"""Shared fixtures: the real Hydra config, composed once and shrunk to a tiny CPU run in a tmp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "text_encoder.num_layers=1",
    "data.synthetic.num_scenes=48",
    "data.synthetic.samples_per_shard=16",
    "data.resolution=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.shuffle_buffer=16",
    "unet.base_channels=16",
    "unet.channel_mults=[1,2]",
    "unet.num_res_blocks=1",
    "trainer.max_steps=4",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "stage.sampling.steps=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid.every_n_steps=2",
    "+callbacks.throughput.window_size=2",
    "callbacks.sample_grid.prompts=[a red circle,two blue squares]",
]


def compose_config(name: str, tmp: Path, overrides: list[str]) -> DictConfig:
    """Compose conf/<name>.yaml with the Hydra runtime set, outputs under tmp."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path, shared_data_dir: Path) -> DictConfig:
    """The real train config, tiny, writing into tmp_path/run; data shared by the session."""
    cfg = compose_config("train", tmp_path / "run", TINY + [f"paths.data_dir={shared_data_dir}"])
    yield cfg
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")
