"""The stages of the training pipeline; they run inside each DataLoader worker on its own shards.

shards (shuffled alike on every rank) -> split_by_node -> split_by_worker -> tar samples -> JoinEmbeddings
-> SampleShuffle -> DecodeImages [-> LowResPairs, for SR stages] -> Batcher. Stages are plain picklable objects:
no text encoder, only paths.
"""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset
from webdataset.utils import pytorch_worker_info

from imagen_lit.data.lowres import stack_lowres
from imagen_lit.data.shards import decode_caption
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
    """Yield {'url': ...} per shard, shuffled by (seed, epoch): the same order on every rank and worker."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.urls, self.seed, self.shuffle, self.epoch = list(urls), seed, shuffle, -1

    def __iter__(self):
        self.epoch += 1  # counts epochs in each (persistent) worker's own copy
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
        for url in urls:
            yield {"url": url}


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
    """Buffered sample shuffle, seeded by (seed, rank, worker, epoch)."""

    def __init__(self, bufsize: int, seed: int = 0) -> None:
        self.bufsize, self.seed, self.epoch = bufsize, seed, -1

    def __call__(self, src):
        self.epoch += 1
        if self.bufsize <= 1:
            yield from src
            return
        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{rank}/{worker}/{self.epoch}")
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
