"""Text-side work done once per sampling run: the caption does not change across sampling steps, so its projection,
pooling and every attention layer's keys/values need not be recomputed at each of them.

    with text_cache(unet):          # BaseStage.generate does this around the sampler
        for t in steps: unet(x_t, t, text_embeds, text_mask)   # the same text tensors at every step

Outside the context nothing is cached (training needs the graph through the text side each step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

_ATTR = "_text_cache"


def cached(module: nn.Module, name: str, keys: tuple[Tensor | None, ...], compute: Callable[[], Any]) -> Any:
    """compute(), or its stored result when `module` is inside text_cache and was called with these very tensors.

    Keys are compared by identity; the cache holds them, so no other tensor can take their place meanwhile.
    """
    cache: dict[str, tuple[tuple[Tensor | None, ...], Any]] | None = getattr(module, _ATTR, None)
    if cache is None:
        return compute()
    hit = cache.get(name)
    if hit is not None and len(hit[0]) == len(keys) and all(a is b for a, b in zip(hit[0], keys, strict=True)):
        return hit[1]
    value = compute()
    cache[name] = (keys, value)
    return value


@contextmanager
def text_cache(net: nn.Module) -> Iterator[None]:
    """Cache text-side results in every module of `net` for the duration (one sampling run)."""
    modules = list(net.modules())
    for m in modules:
        object.__setattr__(m, _ATTR, {})  # a plain attribute, never a buffer or a submodule
    try:
        yield
    finally:
        for m in modules:
            object.__setattr__(m, _ATTR, None)
