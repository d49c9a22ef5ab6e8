"""Feature extractors for FID/KID: a small CNN trained on the synthetic world ("domain"), or Inception-v3 from local
weights. Both take uint8 images [N, 3, H, W] (or float in [0, 1], torchmetrics' `normalize=True` convention) and
return features [N, D]; both work as `feature=` modules of torchmetrics' FID/KID.

The domain network's features are NOT Inception features: scores computed with it are reported as domain_fid /
domain_kid and are comparable only with other domain scores from the same weights (see `fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from imagen_lit.data.render import render_scene
from imagen_lit.data.shards import synthetic_scene
from imagen_lit.data.world import COLOURS, KINDS, SHAPES, SIZES, Scene
from imagen_lit.fileio import atomic_write

WEIGHTS_FORMAT = "imagen-lit/domain-features/v1"
PACKAGED_WEIGHTS = "data/domain_features.safetensors"  # inside imagen_lit.eval
INCEPTION_WEIGHTS_KEY = "eval.inception_weights"  # the config key that names Inception's local weights
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
MAX_OBJECTS = 4  # counting scenes hold at most four objects
GRID = 4  # the occupancy target: which cells of a GRID x GRID grid hold an object centre


@dataclass(frozen=True)
class DomainFeatureConfig:
    """Architecture of the domain network and of its feature vector."""

    input_size: int = 64
    widths: tuple[int, ...] = (32, 48, 64, 96)  # one stride-2 stage each
    squeeze: int = 32  # 1x1 conv width before flattening the final grid
    feature_dim: int = 128  # the penultimate layer, which the attribute heads read
    norm_groups: int = 8  # GroupNorm groups; 0: no normalisation
    stem_norm: bool = False  # normalise the first conv too (per-image norm there blurs absolute colour)
    # The feature vector: the penultimate layer plus the spatial mean and std of each channel of these stages'
    # outputs (low-level statistics: noise, blur and colour casts move them; the semantic layer barely notices).
    pooled_stages: tuple[int, ...] = (0, 1)
    clip: float = 4.0  # standardised features pass through clip * tanh(z / clip); 0: no clipping

    def __post_init__(self) -> None:
        if self.input_size % 2 ** len(self.widths):
            raise ValueError(
                f"input_size {self.input_size} must be divisible by 2**len(widths) = {2 ** len(self.widths)}"
            )
        if any(not 0 <= s < len(self.widths) for s in self.pooled_stages):
            raise ValueError(f"pooled_stages {self.pooled_stages} must index widths {self.widths}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {**asdict(self), "widths": list(self.widths), "pooled_stages": list(self.pooled_stages)}

    @classmethod
    def from_dict(cls, d: dict) -> DomainFeatureConfig:
        """Inverse of `to_dict`."""
        return cls(**{**d, "widths": tuple(d["widths"]), "pooled_stages": tuple(d["pooled_stages"])})


# The attribute heads (names and output sizes), derived from the world's vocabulary.
HEAD_SIZES: dict[str, int] = {
    "colours": len(COLOURS),  # multi-label: which colours appear
    "shapes": len(SHAPES),  # multi-label: which shapes appear
    "sizes": len(SIZES),  # multi-label: which size words appear
    "cells": GRID * GRID,  # multi-label: which grid cells hold an object centre
    "count": MAX_OBJECTS,  # classes: 1..4 objects
    "kind": len(KINDS),  # classes: single / counting / binding / spatial
}
MULTILABEL: tuple[str, ...] = ("colours", "shapes", "sizes", "cells")


def _to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] images [N, 3, H, W] -> float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if images.is_floating_point():
        return images.float()
    raise ValueError(f"expected uint8 or floating-point images, got {images.dtype}")


def _fingerprint(kind: str, config: dict, module: nn.Module) -> str:
    """sha256 over the extractor's kind, config and every parameter/buffer (names, shapes, bytes)."""
    h = hashlib.sha256(json.dumps({"kind": kind, "config": config}, sort_keys=True).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class DomainFeatureNet(nn.Module):
    """CNN trained to name a synthetic scene's colours, shapes, sizes, layout, count and kind; features: [N, D].

    The features are the penultimate layer (semantic) concatenated with per-channel spatial means and stds of the
    early stages (low-level), standardised per dimension on real renders (`calibrate`) so that KID's polynomial
    kernel sees unit-scale features as with Inception's, and soft-clipped so a few rare, very large activations do
    not dominate the kernel and the covariance.
    """

    kind = "domain"  # metric names: domain_fid, domain_kid_mean, domain_kid_std

    def __init__(self, config: DomainFeatureConfig | None = None) -> None:
        super().__init__()
        self.config = config or DomainFeatureConfig()
        layers: list[nn.Module] = []
        c_in = 3
        groups = self.config.norm_groups
        norm = lambda c, on=True: nn.GroupNorm(groups, c) if groups and on else nn.Identity()
        for i, width in enumerate(self.config.widths):
            layers += [
                nn.Conv2d(c_in, width, 3, stride=2, padding=1),
                norm(width, i > 0 or self.config.stem_norm),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                norm(width),
                nn.SiLU(),
            ]
            c_in = width
        layers += [nn.Conv2d(c_in, self.config.squeeze, 1), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        grid = self.config.input_size // 2 ** len(self.config.widths)
        self.project = nn.Linear(self.config.squeeze * grid * grid, self.config.feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(self.config.feature_dim, n) for name, n in HEAD_SIZES.items()})
        self.register_buffer("feature_mean", torch.zeros(self.num_features))  # set by `calibrate`
        self.register_buffer("feature_std", torch.ones(self.num_features))
        self.eval()

    @property
    def num_features(self) -> int:
        """Feature dimension (torchmetrics reads this instead of probing with a dummy image)."""
        return self.config.feature_dim + 2 * sum(self.config.widths[s] for s in self.config.pooled_stages)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] float [N, 3, H, W] -> normalised float [N, 3, S, S] at the network's input size."""
        x = _to_unit_float(images)
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - 0.5) / 0.25  # the grey background (128) maps to ~0

    def _run(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The penultimate layer [N, feature_dim] and the outputs of the pooled stages [N, C_s, H_s, W_s]."""
        h = self.preprocess(images)
        stage_ends = {6 * s + 5 for s in self.config.pooled_stages}  # each stage is 6 layers: conv norm act x2
        maps = []
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in stage_ends:
                maps.append(h)
        return F.silu(self.project(h.flatten(1))), maps  # [N, squeeze, g, g] -> [N, squeeze * g * g] -> [N, D]

    def raw_features(self, images: Tensor) -> Tensor:
        """The unstandardised feature vector [N, num_features]: penultimate layer, then pooled stage statistics."""
        penultimate, maps = self._run(images)
        pooled = [torch.cat([m.mean((2, 3)), m.std((2, 3))], 1) for m in maps]  # [N, C_s, H, W] -> [N, 2 C_s]
        return torch.cat([penultimate, *pooled], 1)

    def forward(self, images: Tensor) -> Tensor:
        """Features [N, num_features] of images [N, 3, H, W]: standardised and soft-clipped raw features."""
        z = (self.raw_features(images) - self.feature_mean) / self.feature_std
        c = self.config.clip
        return c * torch.tanh(z / c) if c else z

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Attribute logits of every head, {name: [N, n]}."""
        penultimate, _ = self._run(images)
        return {name: head(penultimate) for name, head in self.heads.items()}

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor], min_std: float = 1e-3) -> None:
        """Set the standardisation from the raw features of real images (uint8 [B, 3, H, W] batches)."""
        f = torch.cat([self.raw_features(b).double() for b in batches])  # [N, D]
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(min_std))  # dead units keep a finite scale

    def fingerprint(self) -> str:
        """Identity of this extractor (architecture and weights); the reference-statistics cache is keyed by it."""
        return _fingerprint(self.kind, self.config.to_dict(), self)


def scene_targets(scene: Scene) -> dict[str, Tensor]:
    """Training targets of one scene, one entry per head (multi-hot float vectors or a class index)."""
    objs = scene.objects
    cells = torch.zeros(GRID * GRID)
    for o in objs:
        cells[min(int(o.y * GRID), GRID - 1) * GRID + min(int(o.x * GRID), GRID - 1)] = 1
    return {
        "colours": torch.tensor([float(any(o.colour == c for o in objs)) for c in COLOURS]),
        "shapes": torch.tensor([float(any(o.shape == s for o in objs)) for s in SHAPES]),
        "sizes": torch.tensor([float(any(o.size == s for o in objs)) for s in SIZES]),
        "cells": cells,
        "count": torch.tensor(len(objs) - 1),
        "kind": torch.tensor(list(KINDS).index(scene.kind)),
    }


def render_scenes(seed: int, start: int, count: int, resolution: int) -> Tensor:
    """Renders of scenes start..start+count-1 of the synthetic world with this seed, uint8 [count, 3, R, R]."""
    pixels = np.stack(
        [np.asarray(render_scene(synthetic_scene(seed, i), resolution)) for i in range(start, start + count)]
    )  # [count, R, R, 3]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # [count, 3, R, R]


def save_domain_features(net: DomainFeatureNet, path: str | Path, extra: dict | None = None) -> dict:
    """Write the weights (safetensors, config in metadata) and a JSON sidecar; returns the sidecar's content."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "config": json.dumps(net.config.to_dict(), sort_keys=True)}
    data = safetensors_save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    info = {
        "format": WEIGHTS_FORMAT,
        "config": net.config.to_dict(),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "fingerprint": net.fingerprint(),
        "parameters": sum(p.numel() for p in net.parameters()),
        **(extra or {}),
    }
    text = json.dumps(info, indent=1, sort_keys=True) + "\n"
    atomic_write(path.with_suffix(".json"), lambda f: f.write(text.encode()))
    return info


def load_domain_features(path: str | Path | None = None) -> DomainFeatureNet:
    """The domain network from a weights file written by `save_domain_features`; None: the packaged weights."""
    if path is None:
        ref = resources.files("imagen_lit.eval").joinpath(PACKAGED_WEIGHTS)
        if not ref.is_file():
            raise FileNotFoundError(
                f"no packaged domain-feature weights at imagen_lit/eval/{PACKAGED_WEIGHTS}; recreate them with "
                f"`python experiments/train_domain_features.py --out imagen_lit/eval/{PACKAGED_WEIGHTS}` or pass "
                "a weights path"
            )
        data = ref.read_bytes()
        where = f"imagen_lit/eval/{PACKAGED_WEIGHTS}"
    else:
        data = Path(path).read_bytes()
        where = str(path)
    try:
        tensors = safetensors_load(data)
        metadata = _safetensors_metadata(data)
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise ValueError(f"{where} is not a readable safetensors file ({e})") from e
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(
            f"{where} is not a domain-feature weights file (format {metadata.get('format')!r}, "
            f"expected {WEIGHTS_FORMAT!r})"
        )
    net = DomainFeatureNet(DomainFeatureConfig.from_dict(json.loads(metadata["config"])))
    net.load_state_dict(tensors)
    return net.eval().requires_grad_(False)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of safetensors bytes: an 8-byte little-endian header length, then a JSON header."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features [N, 2048] (the standard FID network), from local weights only; never downloads."""

    kind = "inception"  # metric names: fid, kid_mean, kid_std
    num_features = 2048

    def __init__(self, weights_path: str | Path | None) -> None:
        super().__init__()
        if weights_path is None:
            raise ValueError(
                f"Inception FID needs local Inception-v3 weights: set {INCEPTION_WEIGHTS_KEY} (conf/eval/fid.yaml) "
                f"to a copy of {INCEPTION_WEIGHTS_FILE} (the FID network of torch-fidelity/torchmetrics); nothing is "
                "downloaded at run time. Without them use feature=domain, reported as domain_fid."
            )
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"{INCEPTION_WEIGHTS_KEY}={weights_path} does not exist; point it at a local "
                f"copy of {INCEPTION_WEIGHTS_FILE}"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as e:  # pragma: no cover - torchmetrics is a dependency
            raise ImportError("Inception features need torchmetrics") from e
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(
                "Inception features need torch-fidelity (`pip install torch-fidelity`, or torchmetrics[image]), "
                f"which provides the network that {INCEPTION_WEIGHTS_FILE} fits; it is not installed"
            )
        self.weights_path = weights_path
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights_path)
        )
        self.eval().requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        """Features [N, 2048] of uint8 or [0, 1] float images [N, 3, H, W] (resized to 299 inside)."""
        if images.dtype != torch.uint8:
            images = (_to_unit_float(images).clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(images)

    def fingerprint(self) -> str:
        """Identity: the sha256 of the weights file plus the feature layer."""
        h = hashlib.sha256(b"inception-v3-compat/2048:")
        with open(self.weights_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


FeatureExtractor = DomainFeatureNet | InceptionFeatures


def build_feature_extractor(
    feature: str = "domain", domain_weights: str | Path | None = None, inception_weights: str | Path | None = None
) -> FeatureExtractor:
    """The extractor a config names: feature='domain' (packaged or given weights) or 'inception' (local weights)."""
    if feature == "domain":
        return load_domain_features(domain_weights)
    if feature == "inception":
        return InceptionFeatures(inception_weights)
    raise ValueError(f"unknown feature extractor {feature!r}; expected 'domain' or 'inception'")
