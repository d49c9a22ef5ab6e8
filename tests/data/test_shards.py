"""Synthetic shards (determinism, manifest reuse) and the caption-embedding cache."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from imagen_lit.data import build_embedding_cache, synthetic_scene, write_synthetic_shards
from imagen_lit.text.cache import load_embeddings
from tests.data.data_testing import as_cached, image_bytes, write_tar


def _members(paths: list[str]) -> dict[str, bytes]:
    """name -> bytes of every member of the shards."""
    out = {}
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def test_shards_are_readable_and_complete(tmp_path):
    paths = write_synthetic_shards(str(tmp_path / "ds"), num_scenes=10, resolution=24, seed=3,
                                   samples_per_shard=4)
    assert [os.path.basename(p) for p in paths] == [f"shard-00000{i}.tar" for i in range(3)]
    samples = list(wds.WebDataset(paths, shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == 10 and len(set(keys)) == 10
    for s in samples:
        scene = synthetic_scene(3, int(s["__key__"]))
        assert s["txt"].decode() == scene.caption
        assert json.loads(s["json"]) == json.loads(scene.to_json())
        assert Image.open(io.BytesIO(s["png"])).size == (24, 24)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["counts"] == [4, 4, 2] and manifest["complete"] and manifest["seed"] == 3


def test_same_seed_same_bytes_whatever_the_shard_size(tmp_path):
    a = _members(write_synthetic_shards(str(tmp_path / "a"), 9, 16, seed=0, samples_per_shard=4))
    b = _members(write_synthetic_shards(str(tmp_path / "b"), 9, 16, seed=0, samples_per_shard=9))
    c = _members(write_synthetic_shards(str(tmp_path / "c"), 9, 16, seed=1, samples_per_shard=4))
    assert a == b  # every image, caption and spec byte-identical
    assert sum(a[k] != c[k] for k in a if k.endswith(".txt")) >= 7


def test_manifest_reuse_and_rewrite(tmp_path):
    out = str(tmp_path / "ds")
    first = write_synthetic_shards(out, 6, 16, seed=0, samples_per_shard=3)
    stamps = {p: os.stat(p).st_mtime_ns for p in first + [os.path.join(out, "manifest.json")]}
    assert write_synthetic_shards(out, 6, 16, seed=0, samples_per_shard=3) == first
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    manifest = os.path.join(out, "manifest.json")
    with open(manifest) as f:
        incomplete = {**json.load(f), "complete": False}
    with open(manifest, "w") as f:
        json.dump(incomplete, f)
    write_synthetic_shards(out, 6, 16, seed=0, samples_per_shard=3)  # incomplete -> rewritten
    assert json.loads(open(manifest).read())["complete"]

    other = write_synthetic_shards(out, 4, 16, seed=5, samples_per_shard=3)  # other parameters -> replaced
    assert len(other) == 2 and len(list(wds.WebDataset(other, shardshuffle=False))) == 4
    assert not [p for p in os.listdir(tmp_path) if "partial" in p or ".old-" in p]  # no temp folders left

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="manifest"):
        write_synthetic_shards(str(tmp_path / "foreign"), 4, 16, seed=0)
    with pytest.raises(ValueError, match="image_format"):
        write_synthetic_shards(str(tmp_path / "x"), 4, 16, seed=0, image_format="bmp")


def test_jpg_shards(tmp_path):
    paths = write_synthetic_shards(str(tmp_path / "ds"), 3, 32, seed=0, image_format="jpg")
    sample = next(iter(wds.WebDataset(paths, shardshuffle=False)))
    assert Image.open(io.BytesIO(sample["jpg"])).format == "JPEG"


def test_embedding_cache_matches_encoder_and_is_built_once(tmp_path, fake_encoder):
    paths = write_synthetic_shards(str(tmp_path / "ds"), 10, 16, seed=0, samples_per_shard=4)
    caches = build_embedding_cache(paths, fake_encoder, cache_dir=None)
    root = tmp_path / "ds" / "embeds" / "fake-d8"
    assert caches == [str(root / f"shard-00000{i}.safetensors") for i in range(3)]
    calls = fake_encoder.calls
    for shard, cache in zip(paths, caches, strict=True):
        table = load_embeddings(cache)
        captions = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(shard, shardshuffle=False)}
        assert set(table) == set(captions)
        for key, caption in captions.items():
            assert torch.equal(table[key], as_cached(caption))
    stamps = [os.stat(c).st_mtime_ns for c in caches]
    assert build_embedding_cache(paths, fake_encoder, cache_dir=None) == caches
    assert fake_encoder.calls == calls  # not re-encoded
    assert [os.stat(c).st_mtime_ns for c in caches] == stamps

    # (that batching does not change embeddings is tested at the encoder: tests/text/test_encoder.py)


def test_embedding_cache_skips_missing_captions_and_rebuilds_stale(tmp_path, fake_encoder):
    shard = write_tar(tmp_path / "s-0.tar", [
        {"__key__": "a", "png": image_bytes((8, 8)), "txt": "a red circle"},
        {"__key__": "b", "png": image_bytes((8, 8))},
        {"__key__": "c", "png": image_bytes((8, 8)), "txt": "   "},
    ])
    with pytest.warns(UserWarning, match="2 samples have no caption"):
        (cache,) = build_embedding_cache([shard], fake_encoder, cache_dir=None)
    assert set(load_embeddings(cache)) == {"a"}
    write_tar(tmp_path / "s-0.tar", [{"__key__": "z", "png": image_bytes((8, 8)), "txt": "two blue stars"}])
    os.utime(shard, ns=(1, 1))  # a rewritten shard (new size and mtime) invalidates its cache
    build_embedding_cache([shard], fake_encoder, cache_dir=None)
    assert set(load_embeddings(cache)) == {"z"}


def test_a_world_at_another_resolution_copies_the_caption_cache_instead_of_encoding(tmp_path, fake_encoder):
    """The cascade's stages render one world at each size: the second size's caches are copies of the first's (same
    rows, own stamps, current), while a donor with other captions is not used."""
    from imagen_lit.data import TextImageDataModule
    from imagen_lit.data.shards import stale_caches

    def prepare(resolution: int, seed: int = 0) -> TextImageDataModule:
        dm = TextImageDataModule(fake_encoder, synthetic={"num_scenes": 6, "samples_per_shard": 3, "seed": seed},
                                 resolution=resolution, data_dir=str(tmp_path))
        dm.prepare_data()
        return dm

    low = prepare(8)
    calls = fake_encoder.calls
    assert calls > 0
    high = prepare(16)
    assert fake_encoder.calls == calls  # copied, not encoded
    low_caches, high_caches = (sorted((Path(dm.synthetic_dir) / "embeds" / "fake-d8").glob("*.safetensors"))
                               for dm in (low, high))
    assert [p.name for p in high_caches] == [p.name for p in low_caches]
    for a, b in zip(low_caches, high_caches, strict=True):
        ta, tb = load_embeddings(a), load_embeddings(b)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert stale_caches(high._shard_urls(), "fake-d8") == []  # the copies carry their own shards' stamps
    prepare(16, seed=1)  # other scenes, other captions: encoded
    assert fake_encoder.calls > calls


def test_a_donor_with_other_captions_under_the_same_name_is_not_copied(tmp_path, fake_encoder):
    rows = [{"__key__": "a", "png": image_bytes((8, 8)), "txt": "a red circle"}]
    (tmp_path / "d").mkdir(), (tmp_path / "x").mkdir()
    donor = write_tar(tmp_path / "d" / "s-0.tar", rows)
    build_embedding_cache([donor], fake_encoder)
    shard = write_tar(tmp_path / "x" / "s-0.tar", [{**rows[0], "txt": "a blue square"}])
    calls = fake_encoder.calls
    (cache,) = build_embedding_cache([shard], fake_encoder, donors=[str(tmp_path / "d")])
    assert fake_encoder.calls > calls and torch.equal(load_embeddings(cache)["a"], as_cached("a blue square"))


def test_kind_mix_is_part_of_the_dataset(tmp_path):
    """A synthetic set with another kind mix is written with it, named by it, and not confused with the default."""
    from imagen_lit.data import TextImageDataModule

    paths = write_synthetic_shards(str(tmp_path / "ds"), 6, 16, seed=0, samples_per_shard=3, kinds={"spatial": 1})
    kinds = [json.loads(s["json"])["kind"] for p in paths for s in wds.WebDataset(p, shardshuffle=False)]
    assert kinds == ["spatial"] * 6
    assert json.load(open(tmp_path / "ds" / "manifest.json"))["kinds"] == {"spatial": 1.0}
    default = TextImageDataModule(None, synthetic={"num_scenes": 6}, resolution=16, data_dir=str(tmp_path))
    mixed = TextImageDataModule(None, synthetic={"num_scenes": 6, "kinds": {"spatial": 0.5, "single": 0.5}},
                                resolution=16, data_dir=str(tmp_path))
    assert default.synthetic_dir != mixed.synthetic_dir and mixed.synthetic_dir.endswith("-kinds-single0.5-spatial0.5")
