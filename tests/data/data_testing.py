"""Helpers for the data tests: a deterministic fake text encoder and tiny hand-made shards."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
import webdataset as wds
from PIL import Image


class FakeEncoder:
    """Hash-based token embeddings (D=8): each word's vector depends only on (position, word)."""

    cache_key = "fake-d8"
    dim = 8

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def embed_one(caption: str) -> torch.Tensor:
        """(n_words, 8) float32 in [-1, 1]."""
        rows = []
        for pos, word in enumerate(caption.lower().split()):
            digest = hashlib.sha256(f"{pos}:{word}".encode()).digest()[:8]
            rows.append(np.frombuffer(digest, dtype=np.uint8).astype(np.float32) / 127.5 - 1.0)
        return torch.from_numpy(np.stack(rows))

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, L, 8) embeddings and (B, L) mask."""
        self.calls += 1
        rows = [self.embed_one(c) for c in captions]
        length = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            embeds[i, : len(r)] = r
            mask[i, : len(r)] = True
        return embeds, mask

    def token_lengths(self, captions: list[str]) -> list[int]:
        """What encode() masks as true tokens: one per word."""
        return [len(c.split()) for c in captions]

    def null_condition(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros with an all-False mask."""
        return torch.zeros(batch, length, self.dim), torch.zeros(batch, length, dtype=torch.bool)


def as_cached(caption: str) -> torch.Tensor:
    """What the cache gives back for a caption: the fake embedding after the cache's bfloat16 round trip."""
    return FakeEncoder.embed_one(caption).to(torch.bfloat16).float()


def image_bytes(size: tuple[int, int], colour=(200, 30, 30), fmt: str = "PNG") -> bytes:
    """A plain image encoded as PNG or JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path, samples: list[dict]) -> str:
    """Write samples (dicts of bytes/str with __key__) into one tar shard."""
    with wds.TarWriter(str(path), encoder=False) as sink:
        for s in samples:
            sink.write({k: v.encode() if isinstance(v, str) and k != "__key__" else v for k, v in s.items()})
    return str(path)
