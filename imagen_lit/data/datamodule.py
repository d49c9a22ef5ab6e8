"""Text-image batches from WebDataset shards (LAION-style or the synthetic world) with cached text embeddings.

Usage:
    dm = TextImageDataModule(encoder, synthetic={"num_scenes": 8000, "resolution": 32}, resolution=32)
    dm = TextImageDataModule(encoder, shards="/laion/{00000..00099}.tar", resolution=64)
    dm = TextImageDataModule(encoder, shards=..., resolution=256, lowres_resolution=64)  # + batch["lowres"], SR
    dm.prepare_data(); dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # images (B, 3, H, W) in [-1, 1], text_embeds, text_mask, ...
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any

import lightning
import torch
import webdataset as wds
from webdataset.utils import pytorch_worker_info

from imagen_lit.data.lowres import LowResPairs, check_lowres_options
from imagen_lit.data.pipeline import (
    Batcher,
    BatchQuota,
    DecodeImages,
    EpochLoader,
    EpochPipeline,
    JoinEmbeddings,
    Passes,
    SampleShuffle,
    ShardList,
    SkipBatches,
    SkipCounter,
    WarnAndCount,
)
from imagen_lit.data.shards import build_embedding_cache, read_manifest, stale_caches, write_synthetic_shards
from imagen_lit.data.sources import cache_paths, expand_shards, is_local
from imagen_lit.data.world import check_kinds
from imagen_lit.text.cache import cache_rows

SYNTHETIC_KEYS = ("num_scenes", "seed", "resolution", "samples_per_shard", "image_format", "kinds")


class TextImageDataModule(lightning.LightningDataModule):
    """Shards -> (images, text_embeds, text_mask) batches; captions are encoded once in prepare_data."""

    def __init__(
        self,
        text_encoder,
        shards: str | list[str] | None = None,
        data_dir: str = "data",
        cache_dir: str | None = None,
        synthetic: dict | None = None,
        resolution: int = 64,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        max_text_length: int | None = None,
        lowres_resolution: int | None = None,
        crop_size: int | None = None,
        epoch_length: int | None = None,
    ) -> None:
        super().__init__()
        if (shards is None) == (synthetic is None):
            raise ValueError("give exactly one of shards (a path, glob or brace pattern of .tar files) and "
                             f"synthetic (e.g. {{'num_scenes': 8000}}); got shards={shards!r}, "
                             f"synthetic={synthetic!r}")
        if batch_size < 1 or resolution < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1, resolution >= 1, num_workers >= 0; got {batch_size}, "
                             f"{resolution}, {num_workers}")
        if max_text_length is not None and max_text_length < 1:
            raise ValueError(f"max_text_length must be None or >= 1, got {max_text_length}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be None or >= 1 batch per rank, got {epoch_length}")
        check_lowres_options(resolution, lowres_resolution, crop_size)
        self.synthetic = None
        if synthetic is not None:
            defaults = {"num_scenes": 8000, "seed": 0, "resolution": resolution, "samples_per_shard": 1000,
                        "image_format": "png"}
            self.synthetic = {**defaults, **dict(synthetic)}
            unknown = set(self.synthetic) - set(SYNTHETIC_KEYS)
            if unknown:
                raise ValueError(f"unknown synthetic options {sorted(unknown)}; known ones: {SYNTHETIC_KEYS}")
        self.text_encoder = text_encoder
        self.shards, self.data_dir, self.cache_dir = shards, data_dir, cache_dir
        self.resolution, self.batch_size, self.num_workers = resolution, batch_size, num_workers
        self.shuffle_buffer, self.seed, self.max_text_length = shuffle_buffer, seed, max_text_length
        self.lowres_resolution, self.crop_size = lowres_resolution, crop_size
        self.epoch_length = epoch_length
        self.urls: list[str] | None = None
        self._position: dict[str, Any] = {"epoch": 0, "consumed": {}}  # batches trained on per worker, this epoch
        self._resume: dict[str, Any] | None = None
        self.cache_files: dict[str, str] | None = None

    @property
    def synthetic_dir(self) -> str:
        """Folder of the synthetic shards, named by every parameter that changes their content."""
        return self._world_dir(self.synthetic["resolution"])

    def _world_dir(self, resolution: int | str) -> str:
        """The synthetic world's folder at this resolution ('*': a glob over every resolution)."""
        s = self.synthetic
        name = (f"synthetic-n{s['num_scenes']}-r{resolution}-seed{s['seed']}-"
                f"sps{s['samples_per_shard']}-{s['image_format']}")
        if s.get("kinds") is not None:  # another kind mix is another dataset: e.g. -kinds-single0.2-spatial0.4
            name += "-kinds-" + "-".join(f"{k}{float(w):g}" for k, w in check_kinds(dict(s["kinds"])).items())
        return os.path.join(self.data_dir, name)

    def _shard_urls(self) -> list[str]:
        if self.synthetic is None:
            patterns = [self.shards] if isinstance(self.shards, str) else list(self.shards)
            return [url for pattern in patterns for url in expand_shards(pattern)]
        urls = read_manifest(self.synthetic_dir)
        if urls is None:
            raise FileNotFoundError(f"no complete synthetic dataset in {self.synthetic_dir}; call "
                                    "prepare_data() first (the Trainer does this before setup)")
        return urls

    def prepare_data(self) -> None:
        """Render synthetic shards if missing; encode every shard's captions into the cache (rank 0 only)."""
        if self.synthetic is not None:
            write_synthetic_shards(self.synthetic_dir, **self.synthetic)
        urls = self._shard_urls()
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1 and self.synthetic is None:
            stale = stale_caches(urls, self.text_encoder.cache_key, self.cache_dir)
            if stale:  # encoding here would hold every other rank at Lightning's barrier, past its timeout
                raise RuntimeError(
                    f"{len(stale)} of {len(urls)} shards have no current embedding cache (first: {stale[0]}); "
                    f"encode them before a {world}-process run: python -m imagen_lit.text.precompute "
                    f"shards='{self.shards}' text_encoder=<this run's> devices=<GPUs>")
        build_embedding_cache(urls, self.text_encoder, self.cache_dir, donors=self._same_captions_dirs())

    def _same_captions_dirs(self) -> list[str]:
        """Rendered synthetic worlds that differ from this one only in resolution, so hold the same captions (the
        cascade's stages train on one world at each stage's size): their caches can be copied, not re-encoded."""
        if self.synthetic is None:
            return []
        pattern = os.path.join(glob.escape(self.data_dir), os.path.basename(self._world_dir("*")))
        return [d for d in sorted(glob.glob(pattern)) if d != self.synthetic_dir and read_manifest(d) is not None]

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard list and check that every local shard's cache exists, before training starts."""
        self.urls = self._shard_urls()
        paths = cache_paths(self.urls, self.text_encoder.cache_key, self.cache_dir)
        pairs = zip(self.urls, paths, strict=True)
        missing = [p for url, p in pairs if is_local(url) and not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} embedding cache files are missing (first: "
                                    f"{missing[0]}); call prepare_data() to encode the captions")
        self.cache_files = dict(zip(self.urls, paths, strict=True))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the batches training consumed from each worker in this epoch (the resume position)."""
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict) and "worker" in batch:
            if self.trainer.current_epoch != self._position["epoch"]:
                self._position = {"epoch": self.trainer.current_epoch, "consumed": {}}
            consumed = self._position["consumed"]
            consumed[batch["worker"]] = consumed.get(batch["worker"], 0) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position in the data stream: epoch and batches consumed per worker."""
        position = {"epoch": self._position["epoch"], "consumed": dict(self._position["consumed"])}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, position)
            return {"ranks": ranks}
        return {"ranks": [position]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Pick this rank's position; train_dataloader() then replays its epoch up to it."""
        ranks = state.get("ranks", [])
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(ranks) != world:
            warnings.warn(f"checkpoint holds the data position of {len(ranks)} ranks, this run has {world}: "
                          "the resumed epoch starts from its beginning", stacklevel=2)
            return
        self._resume = ranks[rank]

    def batches_per_epoch(self, world: int) -> int | None:
        """Batches each rank takes per epoch: epoch_length, or under DDP ceil(samples / (ranks x batch_size)), so
        that no rank runs out first and leaves the others waiting at a collective; None: one pass (one process)."""
        if self.epoch_length is not None:
            return self.epoch_length
        if world == 1:
            return None
        samples = sum(cache_rows(self.cache_files[url]) for url in self.urls)
        if samples == 0:
            raise ValueError(f"the {len(self.urls)} shards hold no captioned sample; check data.shards")
        return -(-samples // (world * self.batch_size))

    def train_dataloader(self) -> EpochLoader:
        """Shuffled shards split over ranks then workers; batches are built in the workers. Under DDP (or with
        epoch_length) the shard stream cycles and every rank takes the same number of full batches."""
        if self.urls is None:
            self.setup("fit")
        world = self.trainer.world_size if self.trainer is not None else pytorch_worker_info()[1]
        per_rank = self.batches_per_epoch(world)
        readers = world * max(1, self.num_workers)
        if len(self.urls) < readers and per_rank is None:  # cycling passes deal the idle readers shards later
            warnings.warn(f"{len(self.urls)} shards for {readers} readers (ranks x workers): some read "
                          "nothing; use more, smaller shards or fewer workers", stacklevel=2)
        counter = SkipCounter()  # one per worker once the pipeline is copied into each worker
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        skip: dict[int, int] = {}
        if self._resume is not None and self._resume["epoch"] == epoch:  # resumed mid-epoch
            skip = {int(w): n for w, n in self._resume["consumed"].items()}
        self._position, self._resume = {"epoch": epoch, "consumed": dict(skip)}, None
        one_pass = [
            ShardList(self.urls, seed=self.seed),
            wds.tarfile_to_samples(handler=WarnAndCount(counter)),
            JoinEmbeddings(self.cache_files, counter),
            SampleShuffle(self.shuffle_buffer, seed=self.seed),
            DecodeImages(self.resolution, counter),
            *([LowResPairs(self.lowres_resolution, self.crop_size, self.seed)] if self.lowres_resolution else []),
        ]
        stages = [
            Passes(one_pass, cycle=per_rank is not None, epoch=epoch - 1),  # -1: it counts from the resumed epoch
            Batcher(self.batch_size, counter, self.max_text_length),
            *([BatchQuota(per_rank)] if per_rank is not None else []),
            SkipBatches(skip),
        ]
        workers = max(1, self.num_workers)
        pipeline = EpochPipeline(*stages, length=per_rank, worker_offset=sum(skip.values()) % workers)
        return EpochLoader(
            pipeline,
            batch_size=None,  # already batched in the workers
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # keeps each worker's epoch counter for reshuffling
            pin_memory=torch.cuda.is_available(),
        )
