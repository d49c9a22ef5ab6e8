"""python -m imagen_lit.text.precompute: captions encoded before training, sharded over processes, resumable;
train.py refuses to encode inside a multi-process fit."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from imagen_lit.data import TextImageDataModule
from imagen_lit.data.sources import cache_paths
from imagen_lit.text import FrozenTextEncoder, load_embeddings
from imagen_lit.text.encoder import local_device
from imagen_lit.text.precompute import precompute
from tests.conftest import ROOT
from tests.data.data_testing import image_bytes, write_tar

CAPTIONS = ["a red circle", "two green triangles", "a yellow star above a purple hexagon", "one blue square"]


@pytest.fixture
def shards(tmp_path) -> list[str]:
    """Four one-sample shards of distinct captions."""
    return [write_tar(tmp_path / f"s{i}.tar", [{"__key__": f"k{i}", "txt": c, "png": image_bytes((8, 8))}])
            for i, c in enumerate(CAPTIONS)]


def _cfg(tmp_path, tiny_t5_dir, devices: int):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="precompute", overrides=[
            f"shards='{tmp_path}/s{{0..3}}.tar'", f"devices={devices}", "text_encoder=t5_base",
            f"text_encoder.name_or_path={tiny_t5_dir}", "text_encoder.device=cpu", "text_encoder.dtype=float32"])


def _caches(shards, encoder) -> dict[str, torch.Tensor]:
    out = {}
    for path in cache_paths(shards, encoder.cache_key):
        out.update(load_embeddings(path))
    return out


def test_one_process_encodes_every_shard_and_resumes(shards, tmp_path, tiny_t5_dir):
    assert precompute(_cfg(tmp_path, tiny_t5_dir, 1)) == 4
    encoder = FrozenTextEncoder(str(tiny_t5_dir))
    cached = _caches(shards, encoder)
    embeds, mask = encoder.encode(CAPTIONS)
    for i in range(4):
        torch.testing.assert_close(cached[f"k{i}"], embeds[i, mask[i]], rtol=2**-7, atol=1e-5)
    stamps = [os.stat(p).st_mtime_ns for p in cache_paths(shards, encoder.cache_key)]
    precompute(_cfg(tmp_path, tiny_t5_dir, 1))  # everything current: nothing is rewritten
    assert stamps == [os.stat(p).st_mtime_ns for p in cache_paths(shards, encoder.cache_key)]


@pytest.mark.slow
def test_two_processes_split_the_shards_and_match_one(shards, tmp_path, tiny_t5_dir):
    precompute(_cfg(tmp_path, tiny_t5_dir, 2))
    encoder = FrozenTextEncoder(str(tiny_t5_dir))
    two = _caches(shards, encoder)
    for path in cache_paths(shards, encoder.cache_key):
        os.remove(path)
    precompute(_cfg(tmp_path, tiny_t5_dir, 1))
    one = _caches(shards, encoder)
    assert sorted(two) == [f"k{i}" for i in range(4)] and all(torch.equal(two[k], one[k]) for k in one)


def test_each_rank_puts_a_cuda_encoder_on_its_own_device(monkeypatch):
    assert local_device("cuda", 3) == "cuda:3" and local_device("cuda:0", 1) == "cuda:1"
    assert local_device("cpu", 3) == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "2")  # what Lightning's DDP launcher and torchrun set in each rank
    assert local_device("cuda") == "cuda:2" and local_device("cuda:5") == "cuda:5"
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert local_device("cuda") == "cuda:1"


def test_a_multi_process_fit_refuses_to_encode_inside_fit(shards, tmp_path, tiny_t5_dir):
    encoder = FrozenTextEncoder(str(tiny_t5_dir))
    dm = TextImageDataModule(encoder, shards=f"{tmp_path}/s{{0..3}}.tar", resolution=8, batch_size=2)
    dm.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(RuntimeError, match="python -m imagen_lit.text.precompute"):
        dm.prepare_data()
    dm.trainer = SimpleNamespace(world_size=1)
    dm.prepare_data()  # one process may still encode in place
    assert all(os.path.isfile(p) for p in cache_paths(shards, encoder.cache_key))
