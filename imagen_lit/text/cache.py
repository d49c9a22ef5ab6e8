"""Caption-embedding cache: captions are encoded once and stored next to the data, never per training step.

One safetensors file per shard holds
    embeds   bfloat16 (N, L_max, D)  rows trimmed to the longest true length in the file, padding zeroed
    lengths  int32    (N,)           true token count of each row
and in its metadata the row keys (a JSON list) plus the caller's metadata (e.g. the encoder's cache_key).
bfloat16, not float16: T5 activations overflow float16's range.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor

from imagen_lit.fileio import atomic_write

_FORMAT = "imagen-lit/text-embeddings/v1"
_RESERVED = ("format", "keys")  # metadata names the cache uses itself


def save_embeddings(
    path: str | Path,
    keys: list[str],
    embeds: Tensor,
    mask: Tensor,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one shard of caption embeddings (B, L, D) with right-padded masks (B, L), atomically."""
    path = Path(path)
    keys = list(keys)
    if embeds.ndim != 3 or mask.ndim != 2 or embeds.shape[:2] != mask.shape:
        raise ValueError(f"expected embeds (N, L, D) and mask (N, L), got {tuple(embeds.shape)} and "
                         f"{tuple(mask.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"embeds must be floating point, got {embeds.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}; pass mask.bool()")
    if len(keys) != embeds.shape[0]:
        raise ValueError(f"got {len(keys)} keys for {embeds.shape[0]} embedding rows; they must match")
    if not all(isinstance(k, str) for k in keys):
        raise ValueError("keys must all be str")
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys in one shard: {duplicates[:5]}; each caption needs a unique key")
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str, got {name!r}: {value!r}")
        if name in _RESERVED:
            raise ValueError(f"metadata name {name!r} is reserved by the cache; rename it")

    mask = mask.cpu()
    lengths = mask.sum(dim=1)  # (N,)
    positions = torch.arange(mask.shape[1])
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("mask rows must be a run of True followed by False (right padding)")
    longest = int(lengths.max()) if len(keys) else 0
    trimmed = embeds.detach().cpu()[:, :longest].masked_fill(~mask[:, :longest, None], 0.0)  # (N, L_max, D)
    trimmed = trimmed.to(torch.bfloat16).contiguous()
    if not torch.isfinite(trimmed).all():
        raise ValueError(f"embeddings for {path} hold NaN or inf (after the bfloat16 cast); check the encoder dtype")

    tensors = {"embeds": trimmed, "lengths": lengths.to(torch.int32)}
    data = safetensors_save(tensors, metadata={**metadata, "format": _FORMAT, "keys": json.dumps(keys)})
    atomic_write(path, lambda f: f.write(data))


def _read(path: str | Path, with_tensors: bool) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Open a cache file and check its layout; errors name the file and say how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding cache {path} does not exist; encode the captions first")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            names = set(f.keys())
            tensors = {name: f.get_tensor(name) for name in names} if with_tensors else {}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"embedding cache {path} is truncated or not a safetensors file ({e}); "
                         "delete it and encode the captions again") from e
    if metadata.get("format") != _FORMAT or "keys" not in metadata or names != {"embeds", "lengths"}:
        raise ValueError(f"{path} is a safetensors file but not an imagen-lit embedding cache "
                         f"(format={metadata.get('format')!r}, tensors={sorted(names)})")
    return metadata, tensors


def load_embeddings(path: str | Path) -> dict[str, Tensor]:
    """Read a shard: key -> float32 (L_i, D) embeddings of the true tokens only (the mask is all ones)."""
    metadata, tensors = _read(path, with_tensors=True)
    keys = json.loads(metadata["keys"])
    embeds, lengths = tensors["embeds"], tensors["lengths"].long()  # (N, L_max, D), (N,)
    if (embeds.ndim != 3 or lengths.shape != (len(keys),) or embeds.shape[0] != len(keys)
            or (len(keys) and (lengths.min() < 0 or lengths.max() > embeds.shape[1]))):
        raise ValueError(f"embedding cache {path} is inconsistent: {len(keys)} keys, embeds "
                         f"{tuple(embeds.shape)}, lengths {tuple(lengths.shape)}; encode the captions again")
    embeds = embeds.float()
    return {key: embeds[i, : int(length)] for i, (key, length) in enumerate(zip(keys, lengths, strict=True))}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The caller's metadata stored with a shard (the cache's own entries left out), without loading tensors."""
    metadata, _ = _read(path, with_tensors=False)
    return {name: value for name, value in metadata.items() if name not in _RESERVED}
