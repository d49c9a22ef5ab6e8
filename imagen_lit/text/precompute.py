"""Caption pre-encoding as its own command: every shard's captions into the embedding cache, before training.

    python -m imagen_lit.text.precompute "shards='/laion/{00000..01023}.tar'" text_encoder=t5_xxl devices=8
    torchrun --nnodes 4 --nproc-per-node 8 -m imagen_lit.text.precompute "shards=..." text_encoder=t5_xxl

Process r of W encodes shards r, r + W, ... on its own device (cuda:<local rank> when the encoder is configured on
cuda, else the CPU). Shards whose cache is already current are skipped, so an interrupted run resumes where it
stopped; each cache file is written atomically, so a killed process leaves no half file behind.
"""

from __future__ import annotations

import os
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from imagen_lit.data.shards import build_embedding_cache
from imagen_lit.data.sources import expand_shards
from imagen_lit.text.encoder import local_device


def shard_urls(shards: str | list[str]) -> list[str]:
    """The shard urls of a pattern or list of patterns, as the datamodule expands them."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    return [url for pattern in patterns for url in expand_shards(pattern)]


def encode_share(cfg: dict[str, Any], rank: int, world: int, local_rank: int) -> int:
    """Encode shards rank, rank + world, ... of the pattern; return how many this process handled."""
    urls = shard_urls(cfg["shards"])[rank::world]
    encoder_cfg = {**cfg["text_encoder"], "device": local_device(cfg["text_encoder"].get("device", "cpu"),
                                                                  local_rank)}
    encoder = instantiate(encoder_cfg)
    for url in tqdm(urls, desc=f"rank {rank}/{world} encoding captions", unit="shard", position=rank):
        build_embedding_cache([url], encoder, cfg.get("cache_dir"), chunk_size=int(cfg.get("chunk_size", 256)))
    return len(urls)


def _spawned(rank: int, cfg: dict[str, Any], world: int) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the processes share this machine's cores
    encode_share(cfg, rank, world, rank)


def precompute(cfg: DictConfig) -> int:
    """Run the pre-encoding here: under torchrun this process's share, else `devices` spawned processes."""
    plain: dict[str, Any] = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
                             else cfg[k] for k in ("shards", "cache_dir", "devices", "chunk_size", "text_encoder")}
    urls = shard_urls(plain["shards"])
    if not urls:
        raise ValueError(f"shards={plain['shards']!r} matches no shard files")
    if "WORLD_SIZE" in os.environ:  # torchrun / SLURM-style launch: one process per rank, already started
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return encode_share(plain, rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    devices = int(plain.get("devices", 1))
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    if devices == 1:
        return encode_share(plain, 0, 1, 0)
    torch.multiprocessing.spawn(_spawned, args=(plain, devices), nprocs=devices, join=True)
    return len(urls)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="precompute")
def main(cfg: DictConfig) -> None:
    precompute(cfg)


if __name__ == "__main__":
    main()
