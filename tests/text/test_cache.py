"""Embedding cache: bfloat16 round trip, trimming, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imagen_lit.text import FrozenTextEncoder, load_embeddings, save_embeddings
from imagen_lit.text.cache import EmbeddingShard, read_metadata, write_embeddings


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


def test_streamed_chunks_write_the_same_file_as_one_batch(tmp_path: Path) -> None:
    embeds, mask = _batch([3, 5, 1, 0, 2], padded_to=7)
    save_embeddings(tmp_path / "one.safetensors", list("abcde"), embeds, mask, metadata={"m": "1"})
    chunks = [(embeds[:2, :5], mask[:2, :5]), (embeds[2:, :3], mask[2:, :3])]  # each chunk padded to its own longest
    write_embeddings(tmp_path / "two.safetensors", list("abcde"), [3, 5, 1, 0, 2], 8, chunks, metadata={"m": "1"})
    one, two = load_embeddings(tmp_path / "one.safetensors"), load_embeddings(tmp_path / "two.safetensors")
    assert list(one) == list(two) and all(torch.equal(one[k], two[k]) for k in one)
    with safe_open(str(tmp_path / "two.safetensors"), framework="pt") as f:  # a plain safetensors file
        assert f.get_tensor("embeds").shape == (5, 5, 8) and f.metadata()["m"] == "1"


def test_embedding_shard_reads_bf16_rows_lazily(tmp_path: Path) -> None:
    embeds, mask = _batch([3, 0, 2], padded_to=4)
    save_embeddings(tmp_path / "s.safetensors", ["x", "y", "z"], embeds, mask)
    shard = EmbeddingShard(tmp_path / "s.safetensors")
    assert len(shard) == 3 and "z" in shard and shard.get("missing") is None
    row = shard.get("x")
    assert row.dtype == torch.bfloat16 and row.shape == (3, 8)
    torch.testing.assert_close(row.float(), embeds[0, :3], rtol=2**-7, atol=1e-6)
    assert shard.get("y").shape == (0, 8)


@pytest.mark.parametrize(
    ("lengths", "chunks", "match"),
    [([3, 5], [(torch.ones(2, 5, 8), torch.arange(5)[None] < torch.tensor([[3], [4]]))], "have true lengths"),
     ([3, 5, 1], [(torch.ones(2, 5, 8), torch.arange(5)[None] < torch.tensor([[3], [5]]))], "held 2 rows for 3"),
     ([2], [(torch.ones(1, 2, 6), torch.ones(1, 2, dtype=torch.bool))], "width 6, the shard 8")],
    ids=["wrong-lengths", "too-few-rows", "wrong-width"],
)
def test_streamed_write_checks_what_the_chunks_hold(tmp_path: Path, lengths, chunks, match) -> None:
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match=match):
        write_embeddings(path, [f"k{i}" for i in range(len(lengths))], lengths, 8, chunks)
    assert not path.exists()  # atomic: nothing half-written is left
