"""FID and KID of generated images against real renders of the synthetic world, through torchmetrics.

The reference side (features of held-out real renders) is computed once and cached on disk, keyed by the feature
extractor's identity (architecture + weights), the reference set (seed, scenes, resolution) and a hash of a few of
its renders (so a changed renderer or world invalidates it too). Scores are named by their feature space:
domain_fid / domain_kid_* with the domain network, fid / kid_* with Inception-v3 only.

    evaluator = FidEvaluator(load_domain_features(), SyntheticReference(seed=1000, num_images=2000, resolution=32),
                             cache_dir="data/fid")
    evaluator.evaluate(samples)  # [N, 3, 32, 32] floats in [-1, 1] -> {"domain_fid": ..., "domain_kid_mean": ...}
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from imagen_lit.eval.features import FeatureExtractor, build_feature_extractor, render_scenes
from imagen_lit.fileio import atomic_write

CACHE_FORMAT = "imagen-lit/fid-reference/v1"
PROBE_IMAGES = 16  # renders hashed into the cache key, so a changed renderer or world recomputes the statistics

ImageBatch = Tensor | np.ndarray


@dataclass(frozen=True)
class SyntheticReference:
    """Real renders: scenes start..start+num_images-1 of the synthetic world with seed `seed`, at `resolution`."""

    seed: int = 1000
    num_images: int = 2000
    resolution: int = 32
    start: int = 0

    def __post_init__(self) -> None:
        if self.num_images < 2 or self.resolution < 1 or self.start < 0:
            raise ValueError(f"need num_images >= 2, resolution >= 1 and start >= 0, got {self}")

    def spec(self) -> dict:
        """What the reference set is, for the cache key: parameters plus a hash of its first renders."""
        probe = render_scenes(self.seed, self.start, min(PROBE_IMAGES, self.num_images), self.resolution)
        return {
            "source": "synthetic",
            "seed": self.seed,
            "start": self.start,
            "num_images": self.num_images,
            "resolution": self.resolution,
            "probe_sha256": hashlib.sha256(probe.numpy().tobytes()).hexdigest(),
        }

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """The renders in order, uint8 [B, 3, R, R] per batch."""
        for i in range(self.start, self.start + self.num_images, batch_size):
            yield render_scenes(self.seed, i, min(batch_size, self.start + self.num_images - i), self.resolution)


class _Passthrough(nn.Module):
    """Hands precomputed features [N, D] to torchmetrics unchanged (extraction happens once, in FidEvaluator)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        """Identity on [N, D]."""
        return features


def to_uint8_nchw(images: ImageBatch, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """One batch -> uint8 [N, 3, H, W]: uint8 tensors [N, 3, H, W] as they are, uint8 arrays [N, H, W, 3] permuted,
    float tensors [N, 3, H, W] mapped from value_range and rounded (as saving them as PNG would)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # [N, H, W, 3] -> [N, 3, H, W]
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor or a numpy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image tensors must be [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"image tensors must be uint8 or floating point, got {images.dtype}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    span = hi - lo
    if x.numel() and (x.min() < lo - span or x.max() > hi + span):  # e.g. [0, 255] floats passed as [-1, 1]
        raise ValueError(
            f"float images range over [{x.min():.3g}, {x.max():.3g}], far outside value_range "
            f"{value_range}; pass the right value_range, or uint8 images"
        )
    return ((x - lo) / span * 255).clamp(0, 255).round().to(torch.uint8)


class FidEvaluator:
    """FID and KID of image sets against one cached reference set, in one feature space."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: SyntheticReference,
        cache_dir: str | Path | None = None,
        batch_size: int = 250,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        kid_seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if kid_subset_size < 2 or kid_subsets < 1 or batch_size < 1:
            raise ValueError(
                f"need kid_subset_size >= 2, kid_subsets >= 1 and batch_size >= 1, got "
                f"{kid_subset_size}, {kid_subsets}, {batch_size}"
            )
        if reference.num_images < kid_subset_size:
            raise ValueError(
                f"the reference set has {reference.num_images} images, fewer than kid_subset_size="
                f"{kid_subset_size}; raise reference.num_images or lower kid_subset_size"
            )
        self.extractor = extractor.to(device).eval()
        self.reference = reference
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.kid_seed = kid_seed
        self.device = torch.device(device)
        self.prefix = "domain_" if extractor.kind == "domain" else ""  # Inception alone earns the plain names
        self.reference_computations = 0  # how often the reference features were extracted (not read from cache)
        self._reference: Tensor | None = None
        self._metrics: tuple[FrechetInceptionDistance, KernelInceptionDistance] | None = None

    @property
    def metric_names(self) -> tuple[str, str, str]:
        """Keys of `evaluate`'s result."""
        return f"{self.prefix}fid", f"{self.prefix}kid_mean", f"{self.prefix}kid_std"

    def cache_key(self) -> dict:
        """Everything the reference features depend on."""
        return {
            "format": CACHE_FORMAT,
            "extractor": self.extractor.kind,
            "fingerprint": self.extractor.fingerprint(),
            "num_features": self.extractor.num_features,
            "reference": self.reference.spec(),
        }

    def cache_path(self, key: dict) -> Path | None:
        """File of the reference features for this key, or None without a cache_dir."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{self.extractor.kind}-r{self.reference.resolution}-{digest}.safetensors"

    @torch.no_grad()
    def features(
        self, images: ImageBatch | Iterable[ImageBatch], value_range: tuple[float, float] = (-1.0, 1.0)
    ) -> Tensor:
        """Features [N, D] (float32, CPU) of one batch or an iterable of batches, extracted batch_size at a time."""
        batches = [images] if isinstance(images, (Tensor, np.ndarray)) else images
        out = []
        res = self.reference.resolution
        for batch in batches:
            x = to_uint8_nchw(batch, value_range)
            if x.shape[-2:] != (res, res):
                raise ValueError(
                    f"images are {tuple(x.shape[-2:])} px but the reference set is {res}x{res}; FID "
                    "compares sets at one resolution (set the reference resolution to match)"
                )
            for i in range(0, len(x), self.batch_size):
                f = self.extractor(x[i : i + self.batch_size].to(self.device))
                out.append(f.float().cpu())
        if not out:
            raise ValueError("no images to evaluate")
        return torch.cat(out)

    def reference_features(self) -> Tensor:
        """Features [N, D] of the reference renders: from memory, else from a matching cache file, else extracted
        (and then cached). A cache file whose key or shape does not match is recomputed and overwritten."""
        if self._reference is not None:
            return self._reference
        key = self.cache_key()
        path = self.cache_path(key)
        feats = self._read_cache(path, key) if path is not None else None
        if feats is None:
            feats = self.features(self.reference.batches(self.batch_size))
            self.reference_computations += 1
            if path is not None:
                data = safetensors_save(
                    {"features": feats.contiguous()},
                    metadata={"format": CACHE_FORMAT, "key": json.dumps(key, sort_keys=True)},
                )
                atomic_write(path, lambda f: f.write(data))
        self._reference = feats
        return feats

    def _read_cache(self, path: Path, key: dict) -> Tensor | None:
        """The cached features if the file exists, parses and matches key and shape; else None (with a warning)."""
        if not path.is_file():
            return None
        data = path.read_bytes()
        try:
            feats = safetensors_load(data)["features"]
            n = int.from_bytes(data[:8], "little")  # safetensors: 8-byte header length, then the JSON header
            metadata = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        except Exception as e:  # truncated or foreign file
            warnings.warn(f"FID reference cache {path} is unreadable ({e}); recomputing it", stacklevel=3)
            return None
        expected = (self.reference.num_images, self.extractor.num_features)
        if metadata.get("key") != json.dumps(key, sort_keys=True) or tuple(feats.shape) != expected:
            warnings.warn(
                f"FID reference cache {path} does not match this extractor/reference set; recomputing it", stacklevel=3
            )
            return None
        return feats

    def _reference_metrics(self) -> tuple[FrechetInceptionDistance, KernelInceptionDistance]:
        """torchmetrics FID and KID holding the reference features as their real side (kept across resets)."""
        if self._metrics is None:
            ref = self.reference_features().double()  # [N, D]; torchmetrics accumulates FID sums in float64
            d = ref.shape[1]
            fid = FrechetInceptionDistance(feature=_Passthrough(d), reset_real_features=False, sync_on_compute=False)
            with warnings.catch_warnings():  # KID's warning that it keeps all features: ours are small
                warnings.simplefilter("ignore", UserWarning)
                kid = KernelInceptionDistance(
                    feature=_Passthrough(d),
                    subsets=self.kid_subsets,
                    subset_size=self.kid_subset_size,
                    reset_real_features=False,
                    sync_on_compute=False,
                )
            fid.update(ref, real=True)
            kid.update(ref, real=True)
            self._metrics = (fid, kid)
        return self._metrics

    def evaluate(
        self, images: ImageBatch | Iterable[ImageBatch], value_range: tuple[float, float] = (-1.0, 1.0)
    ) -> dict[str, float]:
        """{prefix}fid, {prefix}kid_mean and {prefix}kid_std of the images against the reference set.

        images: uint8 [N, 3, H, W] tensors, uint8 [N, H, W, 3] arrays, or float [N, 3, H, W] tensors in value_range
        (default [-1, 1], the stages' output), or an iterable of such batches. KID's subsets are drawn with kid_seed.
        """
        fake = self.features(images, value_range).double()  # [N, D]
        if len(fake) < self.kid_subset_size:
            raise ValueError(
                f"got {len(fake)} images, fewer than kid_subset_size={self.kid_subset_size} (KID "
                "compares subsets of that many); pass more images or lower kid_subset_size"
            )
        fid, kid = self._reference_metrics()
        fid.reset()
        kid.reset()
        fid.update(fake, real=False)
        kid.update(fake, real=False)
        fid_value = fid.compute()
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG: make them repeatable
            torch.manual_seed(self.kid_seed)
            kid_mean, kid_std = kid.compute()
        names = self.metric_names
        return {names[0]: float(fid_value), names[1]: float(kid_mean), names[2]: float(kid_std)}


def build_fid_evaluator(cfg: Mapping, device: str | torch.device = "cpu") -> FidEvaluator:
    """A FidEvaluator from the keys of conf/eval/fid.yaml."""
    extractor = build_feature_extractor(
        cfg.get("feature", "domain"), cfg.get("domain_weights"), cfg.get("inception_weights")
    )
    ref = cfg.get("reference", {})
    reference = SyntheticReference(
        seed=int(ref.get("seed", 1000)),
        num_images=int(ref.get("num_images", 2000)),
        resolution=int(ref.get("resolution", 32)),
        start=int(ref.get("start", 0)),
    )
    return FidEvaluator(
        extractor,
        reference,
        cache_dir=cfg.get("cache_dir"),
        batch_size=int(cfg.get("batch_size", 250)),
        kid_subsets=int(cfg.get("kid_subsets", 100)),
        kid_subset_size=int(cfg.get("kid_subset_size", 1000)),
        kid_seed=int(cfg.get("kid_seed", 0)),
        device=device,
    )
