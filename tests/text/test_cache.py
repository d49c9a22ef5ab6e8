"""Embedding cache: bfloat16 round trip, trimming, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imagen_lit.text import FrozenTextEncoder, load_embeddings, save_embeddings
from imagen_lit.text.cache import read_metadata


def _batch(lengths: list[int], padded_to: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (N, padded_to, dim) embeds with right-padded masks of the given lengths."""
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(len(lengths), padded_to, dim, generator=gen) * 3
    mask = torch.arange(padded_to)[None, :] < torch.tensor(lengths)[:, None]  # (N, L)
    return embeds, mask


def test_round_trip_trims_to_true_lengths(tmp_path: Path) -> None:
    embeds, mask = _batch([3, 5, 1, 0], padded_to=9)
    path = tmp_path / "shard-000.safetensors"
    save_embeddings(path, ["a", "b", "c", "d"], embeds, mask, metadata={"encoder": "tiny-l2-len16"})
    loaded = load_embeddings(path)
    assert list(loaded) == ["a", "b", "c", "d"]
    for key, row, length in zip("abcd", embeds, [3, 5, 1, 0], strict=True):
        assert loaded[key].shape == (length, 8) and loaded[key].dtype == torch.float32
        torch.testing.assert_close(loaded[key], row[:length], rtol=2**-7, atol=1e-6)  # bfloat16 precision
    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor("embeds")
        assert stored.shape == (4, 5, 8) and stored.dtype == torch.bfloat16  # trimmed from 9 to 5
        assert (stored[~mask[:, :5]] == 0).all()
        assert f.get_tensor("lengths").dtype == torch.int32
    assert read_metadata(path) == {"encoder": "tiny-l2-len16"}


def test_encoder_to_cache_round_trip(tiny_t5_dir: Path, tmp_path: Path) -> None:
    enc = FrozenTextEncoder(str(tiny_t5_dir))
    captions = ["a red circle", "", "two green triangles above a yellow star"]
    embeds, mask = enc.encode(captions)
    path = tmp_path / "captions.safetensors"
    save_embeddings(path, ["k0", "k1", "k2"], embeds, mask, metadata={"cache_key": enc.cache_key})
    loaded = load_embeddings(path)
    for i, key in enumerate(["k0", "k1", "k2"]):
        torch.testing.assert_close(loaded[key], embeds[i, mask[i]], rtol=2**-7, atol=1e-5)
    assert read_metadata(path)["cache_key"] == enc.cache_key


def test_atomic_write_leaves_no_temp_files_and_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embeds, mask = _batch([2, 4], padded_to=4)
    path = tmp_path / "nested" / "shard.safetensors"
    save_embeddings(path, ["x", "y"], embeds, mask)
    save_embeddings(path, ["x", "y"], embeds * 2, mask)  # overwriting is fine
    assert os.listdir(path.parent) == ["shard.safetensors"]
    torch.testing.assert_close(load_embeddings(path)["y"], embeds[1] * 2, rtol=2**-7, atol=1e-6)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_embeddings(path, ["x", "y"], embeds * 5, mask)
    assert os.listdir(path.parent) == ["shard.safetensors"]  # temp file cleaned up
    monkeypatch.undo()
    torch.testing.assert_close(load_embeddings(path)["y"], embeds[1] * 2, rtol=2**-7, atol=1e-6)


def test_truncated_file_error_names_the_path(tmp_path: Path) -> None:
    embeds, mask = _batch([3, 3], padded_to=3)
    path = tmp_path / "shard.safetensors"
    save_embeddings(path, ["x", "y"], embeds, mask)
    data = path.read_bytes()
    for cut in (len(data) - 10, 40, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(path)):
            load_embeddings(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.safetensors")):
        load_embeddings(tmp_path / "nope.safetensors")
    foreign = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="not an imagen-lit embedding cache"):
        load_embeddings(foreign)
    with pytest.raises(ValueError, match="not an imagen-lit embedding cache"):
        read_metadata(foreign)


def test_save_validation(tmp_path: Path) -> None:
    embeds, mask = _batch([2, 3], padded_to=3)
    path = tmp_path / "shard.safetensors"
    with pytest.raises(ValueError, match="duplicate keys"):
        save_embeddings(path, ["same", "same"], embeds, mask)
    with pytest.raises(ValueError, match="3 keys for 2 embedding rows"):
        save_embeddings(path, ["a", "b", "c"], embeds, mask)
    with pytest.raises(ValueError, match=r"expected embeds \(N, L, D\)"):
        save_embeddings(path, ["a", "b"], embeds, mask[:, :2])
    with pytest.raises(ValueError, match="torch.bool"):
        save_embeddings(path, ["a", "b"], embeds, mask.long())
    holes = mask.clone()
    holes[1, 0] = False
    with pytest.raises(ValueError, match="right padding"):
        save_embeddings(path, ["a", "b"], embeds, holes)
    with pytest.raises(ValueError, match="reserved"):
        save_embeddings(path, ["a", "b"], embeds, mask, metadata={"keys": "mine"})
    bad = embeds.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        save_embeddings(path, ["a", "b"], bad, mask)
    assert not path.exists() and os.listdir(tmp_path) == []
