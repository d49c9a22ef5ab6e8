"""The stages of the training pipeline; they run inside each DataLoader worker on its own shards.

Passes[shards (shuffled alike on every rank, dealt to this rank and worker) -> tar samples -> JoinEmbeddings
-> SampleShuffle -> DecodeImages [-> LowResPairs, for SR stages]] -> Batcher [-> BatchQuota] -> SkipBatches.
Stages are plain picklable objects: no text encoder, only paths.

With a fixed epoch length (always under DDP) Passes runs reshuffled passes one after another without end and
BatchQuota cuts each worker at its share, so every rank yields the same number of full batches whatever the shard
sizes, and the first pass of every epoch is the finite epoch's stream.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import warnings

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset
from webdataset.utils import pytorch_worker_info

from imagen_lit.data.lowres import stack_lowres
from imagen_lit.data.shards import decode_caption
from imagen_lit.data.sources import pass_key
from imagen_lit.text.cache import EmbeddingShard

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


class SkipCounter:
    """Samples this worker skipped since its last batch; the Batcher hands the count on with each batch."""

    def __init__(self) -> None:
        self.n = 0

    def skip(self, url: str | None, key: str | None, why: str) -> None:
        """Warn about one bad sample and count it."""
        warnings.warn(f"skipping sample {key!r} of shard {url}: {why}", stacklevel=2)
        self.n += 1

    def take(self) -> int:
        """Return the count and reset it."""
        n, self.n = self.n, 0
        return n


class WarnAndCount:
    """webdataset handler for tar-level errors (corrupt member, truncated shard): warn, count one, go on."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, exn: Exception) -> bool:
        self.counter.skip(None, None, f"tar read error, continuing ({exn!r})")
        return True


class ShardList(IterableDataset):
    """This reader's shards in one pass: all urls shuffled by (seed, epoch, pass) alike on every rank and worker, then
    dealt as webdataset's split_by_node and split_by_worker deal a stream, as if the passes were one endless stream:
    position q goes to rank q mod R, then worker (q // R) mod W. So a pass of fewer shards than readers reaches the
    idle readers in later passes. Passes sets epoch and pass_index."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.urls, self.seed, self.shuffle, self.epoch, self.pass_index = list(urls), seed, shuffle, 0, 0

    def __iter__(self):
        rank, world, worker, workers = pytorch_worker_info()
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}/{pass_key(self.epoch, self.pass_index)}").shuffle(urls)
        start = self.pass_index * len(urls)
        for q, url in enumerate(urls, start=start):
            if q % world == rank and (q // world) % workers == worker:
                yield {"url": url}


class Passes(IterableDataset):
    """One pass of the per-pass stages (shards -> decoded samples) per epoch; with cycle=True, pass after pass without
    end, each drained (its shuffle buffer emptied) before the next starts, so the first pass is exactly the finite
    epoch. Owns the epoch counter, in each (persistent) worker's own copy."""

    def __init__(self, stages: list, cycle: bool = False, epoch: int = -1) -> None:
        super().__init__()
        self.stages, self.cycle, self.epoch = list(stages), cycle, epoch

    def __iter__(self):
        self.epoch += 1
        rank, world, worker, workers = pytorch_worker_info()
        empty = 0  # passes in a row that gave this reader nothing
        for pass_index in itertools.count():
            for stage in self.stages:
                if hasattr(stage, "pass_index"):
                    stage.epoch, stage.pass_index = self.epoch, pass_index
            source = iter(self.stages[0])
            for stage in self.stages[1:]:
                source = stage(source)
            n = 0
            for n, sample in enumerate(source, start=1):  # noqa: B007 (n counts the pass's samples)
                yield sample
            if not self.cycle:
                return
            empty = 0 if n else empty + 1
            if empty > world * workers:  # every reader meets every shard within R x W passes
                raise RuntimeError(f"rank {rank} worker {worker}: {empty} passes over {len(self.stages[0].urls)} "
                                   "shards gave no usable sample (each needs a caption, an image and a cached "
                                   "embedding); check the shards")


class JoinEmbeddings:
    """Attach each sample's cached caption embedding, read lazily from its shard's cache file (one row at a time,
    bfloat16), so a worker's memory does not grow with the shard."""

    def __init__(self, cache_files: dict[str, str], counter: SkipCounter) -> None:
        self.cache_files, self.counter = cache_files, counter

    def __call__(self, src):
        url, cache = None, None  # generator-local, so no loaded cache is ever pickled into a worker
        for sample in src:
            key = sample.get("__key__")
            if sample.get("__url__") != url:
                url, cache = sample.get("__url__"), self._load(sample.get("__url__"))
            if cache is None:
                self.counter.n += 1  # the shard's cache was unreadable; warned once in _load
                continue
            caption = decode_caption(sample.get("txt"))
            image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
            embed = cache.get(key)
            if not caption:
                self.counter.skip(url, key, "missing or empty caption (txt)")
            elif image is None:
                self.counter.skip(url, key, f"no image (expected one of {IMAGE_EXTS})")
            elif embed is None or embed.shape[0] == 0:
                self.counter.skip(url, key, "no cached embedding; run prepare_data() to rebuild the cache")
            else:
                spec = sample.get("json")
                yield {"key": key, "url": url, "image": image, "caption": caption,
                       "spec": spec.decode("utf-8", errors="replace") if spec else "",
                       "embed": embed}  # (L_i, D) bfloat16, its own small tensor

    def _load(self, url: str | None) -> EmbeddingShard | None:
        try:
            return EmbeddingShard(self.cache_files[url])
        except (KeyError, FileNotFoundError, ValueError) as e:
            warnings.warn(f"shard {url}: cannot load its embedding cache, skipping the shard ({e})",
                          stacklevel=2)
            return None


class SampleShuffle:
    """Buffered sample shuffle, seeded by (seed, rank, worker, epoch, pass); Passes sets epoch and pass_index."""

    def __init__(self, bufsize: int, seed: int = 0) -> None:
        self.bufsize, self.seed, self.epoch, self.pass_index = bufsize, seed, 0, 0

    def __call__(self, src):
        if self.bufsize <= 1:
            yield from src
            return
        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{rank}/{worker}/{pass_key(self.epoch, self.pass_index)}")
        buf = []
        for sample in src:
            if len(buf) < self.bufsize:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            yield buf[i]
            buf[i] = sample
        rng.shuffle(buf)
        yield from buf


def load_image(data: bytes, resolution: int) -> torch.Tensor:
    """RGB image bytes -> (3, res, res) in [-1, 1]: short side resized (antialiased), centre cropped."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale still >= resolution
        im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.LANCZOS)  # LANCZOS widens its kernel when shrinking
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.array(im, dtype=np.uint8))  # (H, W, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)  # (3, H, W)


class DecodeImages:
    """Decode and crop each sample's image; undecodable ones are skipped with a warning."""

    def __init__(self, resolution: int, counter: SkipCounter) -> None:
        self.resolution, self.counter = resolution, counter

    def __call__(self, src):
        for sample in src:
            try:
                image = load_image(sample.pop("image"), self.resolution)
            except Exception as e:  # PIL raises many types on bad bytes; any of them means "skip"
                self.counter.skip(sample["url"], sample["key"], f"undecodable image ({e!r})")
                continue
            yield {**sample, "image": image}


class Batcher:
    """Batch in the worker; each batch carries the skips since the previous one (held back one sample so
    skips at the end of the stream still ride on the last batch)."""

    def __init__(self, batch_size: int, counter: SkipCounter, max_text_length: int | None = None) -> None:
        self.batch_size, self.counter, self.max_text_length = batch_size, counter, max_text_length

    def __call__(self, src):
        batch, full = [], None
        for sample in src:
            if full is not None:
                yield collate(full, self.counter.take(), self.max_text_length)
                full = None
            batch.append(sample)
            if len(batch) == self.batch_size:
                full, batch = batch, []
        if full or batch:
            yield collate(full or batch, self.counter.take(), self.max_text_length)


class BatchQuota:
    """A fixed epoch: this rank's `per_rank` batches, dealt over its workers (worker w takes per_rank // W, one more
    for w < per_rank % W). Fed by cycling Passes, so each worker always fills its share."""

    def __init__(self, per_rank: int) -> None:
        if per_rank < 1:
            raise ValueError(f"epoch_length must be >= 1 batch per rank, got {per_rank}")
        self.per_rank = per_rank

    def share(self, worker: int, workers: int) -> int:
        """Batches worker `worker` of `workers` yields per epoch."""
        return self.per_rank // workers + (1 if worker < self.per_rank % workers else 0)

    def __call__(self, src):
        _, _, worker, workers = pytorch_worker_info()
        yield from itertools.islice(src, self.share(worker, workers))


class SkipBatches:
    """Exact resume: each worker drops the batches it made in the interrupted epoch before the checkpoint.

    Every stage before this one is seeded by (seed, rank, worker, epoch), so replaying the epoch and dropping
    `per_worker[w]` batches in worker w gives the same stream as the run that was interrupted. The cost is decoding
    the dropped batches once.
    """

    def __init__(self, per_worker: dict[int, int] | None = None) -> None:
        self.per_worker, self.done = dict(per_worker or {}), False

    def __call__(self, src):
        _, _, worker, _ = pytorch_worker_info()
        skip = 0 if self.done else self.per_worker.get(worker, 0)
        self.done = True  # only the first epoch after a resume
        for i, batch in enumerate(src):
            if i >= skip:
                yield {**batch, "worker": worker}  # counted by the datamodule when training consumes it


class EpochPipeline(wds.DataPipeline):
    """The worker pipeline; with `length` set (a fixed epoch), also its length in batches and the worker roles.

    The DataLoader takes batches from its workers round-robin from worker 0 at every epoch start, and BatchQuota's
    shares keep that order to the epoch's end, so batch i of an epoch comes from worker i mod W. A run resumed after k
    batches restarts the round at worker 0: `worker_offset` = k mod W makes worker p play worker (p + k) mod W in that
    epoch (through webdataset's WORKER / NUM_WORKERS variables, which every stage reads), so the stream continues as
    the interrupted run's would have.
    """

    def __init__(self, *stages, length: int | None = None, worker_offset: int = 0) -> None:
        super().__init__(*stages)
        self.length, self.worker_offset = length, worker_offset

    def __iter__(self):
        info = torch.utils.data.get_worker_info()  # the physical worker, never the role set below
        if info is not None and info.num_workers > 1 and self.length is not None:
            os.environ["WORKER"] = str((info.id + self.worker_offset) % info.num_workers)
            os.environ["NUM_WORKERS"] = str(info.num_workers)
        self.worker_offset = 0  # only the first epoch after a resume
        return super().__iter__()


class EpochLoader(wds.WebLoader):
    """The WebLoader over an EpochPipeline, with len() = batches per epoch on this rank when the epoch is fixed (so
    Lightning knows the epoch's length)."""

    def __init__(self, pipeline: EpochPipeline, **kwargs) -> None:
        super().__init__(pipeline, **kwargs)
        self.length = pipeline.length

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this loader reads each shard once per epoch; its length is not known in advance")
        return self.length


def collate(samples: list[dict], n_skipped: int = 0, max_text_length: int | None = None) -> dict:
    """Stack images and pad text to the longest caption in the batch (zeros, mask False beyond it); the cached
    bfloat16 rows become float32 here, in the batch, and nowhere earlier."""
    embeds = [s["embed"][:max_text_length] for s in samples]  # each (L_i, D)
    length, dim = max(e.shape[0] for e in embeds), embeds[0].shape[1]
    text_embeds = torch.zeros(len(samples), length, dim)  # (B, L, D)
    text_mask = torch.zeros(len(samples), length, dtype=torch.bool)  # (B, L)
    for i, e in enumerate(embeds):
        text_embeds[i, : e.shape[0]] = e
        text_mask[i, : e.shape[0]] = True
    return {
        "images": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W)
        "text_embeds": text_embeds,
        "text_mask": text_mask,
        "captions": [s["caption"] for s in samples],
        "specs": [s["spec"] for s in samples],
        "keys": [s["key"] for s in samples],
        "n_skipped": n_skipped,
        **stack_lowres(samples),  # lowres (B, 3, h, w) for super-resolution stages
    }
