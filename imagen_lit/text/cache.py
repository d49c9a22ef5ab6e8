"""Caption-embedding cache: captions are encoded once and stored next to the data, never per training step.

One safetensors file per shard holds
    embeds   bfloat16 (N, L_max, D)  rows trimmed to the longest true length in the file, padding zeroed
    lengths  int32    (N,)           true token count of each row
and in its metadata the row keys (a JSON list) plus the caller's metadata (e.g. the encoder's cache_key).
bfloat16, not float16: T5 activations overflow float16's range.

Memory stays bounded whatever the shard's size: `write_embeddings` streams chunks of rows into the file (a LAION
shard of 10k captions at T5-XXL is 10.5 GB of bfloat16), and `EmbeddingShard` reads one row at a time from the
file with a positioned read of just its bytes, still in bfloat16; the batch is the first float32 tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from imagen_lit.fileio import atomic_write

_FORMAT = "imagen-lit/text-embeddings/v1"
_RESERVED = ("format", "keys")  # metadata names the cache uses itself


def _check_keys(keys: list[str], n: int) -> None:
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} keys for {n} embedding rows; they must match")
    if not all(isinstance(k, str) for k in keys):
        raise ValueError("keys must all be str")
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys in one shard: {duplicates[:5]}; each caption needs a unique key")


def _check_metadata(metadata: dict[str, str]) -> None:
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str, got {name!r}: {value!r}")
        if name in _RESERVED:
            raise ValueError(f"metadata name {name!r} is reserved by the cache; rename it")


def _check_chunk(embeds: Tensor, mask: Tensor) -> Tensor:
    """Validate one (b, L, D) / (b, L) chunk; return its true lengths (b,)."""
    if embeds.ndim != 3 or mask.ndim != 2 or embeds.shape[:2] != mask.shape:
        raise ValueError(f"expected embeds (N, L, D) and mask (N, L), got {tuple(embeds.shape)} and "
                         f"{tuple(mask.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"embeds must be floating point, got {embeds.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}; pass mask.bool()")
    mask = mask.cpu()
    lengths = mask.sum(dim=1)  # (b,)
    if not torch.equal(mask, torch.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("mask rows must be a run of True followed by False (right padding)")
    return lengths


def write_embeddings(
    path: str | Path,
    keys: list[str],
    lengths: list[int],
    dim: int,
    chunks: Iterable[tuple[Tensor, Tensor]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream one shard to disk, atomically: `chunks` yields (embeds (b, l, D), mask (b, l)) for the keys in order,
    whose true lengths must be `lengths`. Only one chunk is in memory at a time (the safetensors header is written
    first, from the lengths, then each chunk's rows as bfloat16 padded to the longest length)."""
    path, keys, lengths = Path(path), list(keys), [int(n) for n in lengths]
    _check_keys(keys, len(lengths))
    metadata = dict(metadata or {})
    _check_metadata(metadata)
    n, longest = len(keys), max(lengths, default=0)
    embed_bytes = n * longest * dim * 2
    header = {
        "__metadata__": {**metadata, "format": _FORMAT, "keys": json.dumps(keys)},
        "embeds": {"dtype": "BF16", "shape": [n, longest, dim], "data_offsets": [0, embed_bytes]},
        "lengths": {"dtype": "I32", "shape": [n], "data_offsets": [embed_bytes, embed_bytes + 4 * n]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format allows space padding; 8-byte alignment of the data

    def write(f) -> None:
        f.write(struct.pack("<Q", len(raw)) + raw)
        row = 0
        for embeds, mask in chunks:
            chunk_lengths = _check_chunk(embeds, mask)
            b = embeds.shape[0]
            if chunk_lengths.tolist() != lengths[row : row + b]:
                raise ValueError(f"{path}: rows {row}..{row + b - 1} have true lengths {chunk_lengths.tolist()[:8]}, "
                                 f"expected {lengths[row : row + b][:8]}; tokenize with the encoder that encodes")
            if embeds.shape[2] != dim:
                raise ValueError(f"{path}: chunk has width {embeds.shape[2]}, the shard {dim}")
            padded = torch.zeros(b, longest, dim, dtype=torch.bfloat16)  # (b, L_max, D), padding zeroed
            width = min(longest, embeds.shape[1])
            padded[:, :width] = embeds.detach().cpu()[:, :width].masked_fill(~mask.cpu()[:, :width, None], 0.0)
            if not torch.isfinite(padded).all():
                raise ValueError(f"embeddings for {path} hold NaN or inf (after the bfloat16 cast); check the "
                                 f"encoder dtype")
            f.write(padded.view(torch.int16).numpy().tobytes())  # bf16 bit patterns, little-endian
            row += b
        if row != n:
            raise ValueError(f"{path}: the chunks held {row} rows for {n} keys")
        f.write(torch.tensor(lengths, dtype=torch.int32).numpy().tobytes())

    atomic_write(path, write)


def save_embeddings(
    path: str | Path,
    keys: list[str],
    embeds: Tensor,
    mask: Tensor,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one shard of caption embeddings (B, L, D) with right-padded masks (B, L), atomically."""
    lengths = _check_chunk(embeds, mask)
    _check_keys(list(keys), embeds.shape[0])
    write_embeddings(path, list(keys), lengths.tolist(), embeds.shape[2], [(embeds, mask)], metadata)


def copy_embeddings(src: str | Path, dst: str | Path, metadata: dict[str, str]) -> None:
    """Write src's rows to dst under new caller metadata: keys and tensors byte for byte, streamed, atomically."""
    _check_metadata(metadata)
    keys = _read(src)["keys"]
    with open(src, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    header["__metadata__"] = {**metadata, "format": _FORMAT, "keys": keys}  # data offsets are relative: unchanged
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(out) -> None:
        out.write(struct.pack("<Q", len(raw)) + raw)
        with open(src, "rb") as f:
            f.seek(8 + size)
            shutil.copyfileobj(f, out, 1 << 20)

    atomic_write(dst, write)


def _read(path: str | Path) -> dict[str, str]:
    """A cache file's metadata, after checking its layout; errors name the file and say how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding cache {path} does not exist; encode the captions first")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            names = set(f.keys())
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"embedding cache {path} is truncated or not a safetensors file ({e}); "
                         "delete it and encode the captions again") from e
    if metadata.get("format") != _FORMAT or "keys" not in metadata or names != {"embeds", "lengths"}:
        raise ValueError(f"{path} is a safetensors file but not an imagen-lit embedding cache "
                         f"(format={metadata.get('format')!r}, tensors={sorted(names)})")
    return metadata


class EmbeddingShard:
    """One cache file, read lazily: `get(key)` is that caption's bfloat16 (L_i, D) embedding of its true tokens, read
    with one positioned read of just those bytes (no memory map, whose touched pages would stay resident), so a
    worker holds the rows it has handed out and nothing more."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        metadata = _read(self.path)
        self.keys: list[str] = json.loads(metadata["keys"])
        with safe_open(str(self.path), framework="pt") as f:
            shape = f.get_slice("embeds").get_shape()
            self._lengths = f.get_tensor("lengths").long()  # (N,): 4 bytes a row
        with open(self.path, "rb") as f:  # where the embeds' bytes start: after the 8-byte size and the header
            header_size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_size))
        if header["embeds"]["dtype"] != "BF16":
            raise ValueError(f"embedding cache {path} stores {header['embeds']['dtype']}, not BF16; encode again")
        self._offset = 8 + header_size + header["embeds"]["data_offsets"][0]
        self._row_bytes = shape[1] * shape[2] * 2 if len(shape) == 3 else 0
        self._dim = shape[2] if len(shape) == 3 else 0
        self._fd: int | None = None
        self._index = {key: i for i, key in enumerate(self.keys)}
        if (len(shape) != 3 or self._lengths.shape != (len(self.keys),) or shape[0] != len(self.keys)
                or (self.keys and (self._lengths.min() < 0 or self._lengths.max() > shape[1]))):
            raise ValueError(f"embedding cache {path} is inconsistent: {len(self.keys)} keys, embeds {tuple(shape)}, "
                             f"lengths {tuple(self._lengths.shape)}; encode the captions again")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, key: str) -> Tensor | None:
        """The (L_i, D) bfloat16 row of `key`, or None when the shard has no such caption."""
        i = self._index.get(key)
        if i is None:
            return None
        if self._fd is None:  # opened on first use, in the process that reads (a DataLoader worker)
            self._fd = os.open(self.path, os.O_RDONLY)
        length = int(self._lengths[i])
        if length == 0:
            return torch.zeros(0, self._dim, dtype=torch.bfloat16)
        data = os.pread(self._fd, length * self._dim * 2, self._offset + i * self._row_bytes)  # the true tokens
        return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(length, self._dim)  # (L_i, D)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def load_embeddings(path: str | Path) -> dict[str, Tensor]:
    """Read a whole shard: key -> float32 (L_i, D) embeddings of the true tokens only (for small shards and tests;
    the training pipeline reads rows lazily through EmbeddingShard)."""
    shard = EmbeddingShard(path)
    return {key: shard.get(key).float() for key in shard.keys}


def cache_rows(path: str | Path) -> int:
    """How many captions a cache file holds, from its header alone."""
    return len(json.loads(_read(path)["keys"]))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The caller's metadata stored with a shard (the cache's own entries left out), without loading tensors."""
    metadata = _read(path)
    return {name: value for name, value in metadata.items() if name not in _RESERVED}
