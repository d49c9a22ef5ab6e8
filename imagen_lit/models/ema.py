"""Exponential moving average of the network weights, used for sampling (Imagen App. F)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """EMA copy of a module; decay warms up as min(decay, (1 + n) / (10 + n)) so short runs get a useful average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay used for the next update."""
        n = int(self.num_updates) + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * model; buffers are copied."""
        weight = 1.0 - self.current_decay()
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, weight)
        for eb, b in zip(self.module.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self


def is_zero3_partitioned(model: nn.Module | None) -> bool:
    """True when DeepSpeed ZeRO-3 has partitioned the module's parameters (each holds a `ds_tensor` shard)."""
    return model is not None and any(hasattr(p, "ds_tensor") for p in model.parameters())


class ShardedEMA:
    """EMA of ZeRO-3 partitioned weights: each rank averages its own fp32 copy of its shards and never gathers.

    DeepSpeed partitions every parameter on its own: flattened, padded to a multiple of the world size, one
    contiguous slice per rank (`p.ds_tensor`). `gather_sharded_ema` puts the slices of all ranks back together.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        named = [(n, p) for n, p in model.named_parameters() if hasattr(p, "ds_tensor")]
        if not named:
            raise ValueError("ShardedEMA needs a ZeRO-3 partitioned module (parameters with ds_tensor)")
        self.decay = decay
        self.warmup = warmup
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.ds_shape) for _, p in named]
        self.numels = [int(p.ds_numel) for _, p in named]
        self.shadow = [p.ds_tensor.detach().float().clone() for _, p in named]
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay used for the next update (same warmup as EMA)."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shard <- decay * shard + (1 - decay) * this rank's current shard of each weight."""
        weight = 1.0 - self.current_decay()
        shards = dict(model.named_parameters())
        current = [shards[n].ds_tensor.detach().float() for n in self.names]
        torch._foreach_lerp_(self.shadow, current, weight)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """This rank's shards with what is needed to reassemble them (names, shapes, numels)."""
        return {"kind": "sharded", "names": self.names, "shapes": self.shapes, "numels": self.numels,
                "shadow": [s.cpu() for s in self.shadow], "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore this rank's shards; the partitioning must be the one they were saved with."""
        if state.get("kind") != "sharded" or state["names"] != self.names:
            raise ValueError("sharded EMA state does not match this model's parameters")
        sizes = [s.numel() for s in state["shadow"]]
        if sizes != [s.numel() for s in self.shadow]:
            raise ValueError("sharded EMA was saved with another world size; convert the checkpoint first")
        for dst, src in zip(self.shadow, state["shadow"], strict=True):
            dst.copy_(src)
        self.num_updates = int(state["num_updates"])


def gather_sharded_ema(rank_states: list[dict]) -> dict[str, torch.Tensor]:
    """Full EMA weights from every rank's ShardedEMA state, in rank order: concatenate, unpad, reshape."""
    if not rank_states:
        raise ValueError("no sharded EMA states to gather")
    first = rank_states[0]
    full: dict[str, torch.Tensor] = {}
    for i, (name, shape, numel) in enumerate(zip(first["names"], first["shapes"], first["numels"], strict=True)):
        flat = torch.cat([state["shadow"][i].reshape(-1) for state in rank_states])  # (world * shard,)
        if flat.numel() < numel:
            raise ValueError(f"sharded EMA for {name} has {flat.numel()} elements, expected {numel}: missing ranks?")
        full[f"module.{name}"] = flat[:numel].reshape(shape)
    full["num_updates"] = torch.tensor(int(first["num_updates"]))
    return full
