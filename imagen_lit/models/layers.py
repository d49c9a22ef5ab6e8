"""U-Net building blocks: time embedding, text pooling, residual blocks and attention with text (Imagen App. B)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from imagen_lit.models.text_cache import cached


def zero_init_(module: nn.Module) -> nn.Module:
    """Zero a layer's weights (output layers start as identity/no-op), also when DeepSpeed ZeRO-3 already sharded it.

    Under `deepspeed.zero.Init` each module is partitioned as soon as it is built, so a plain `zeros_` on it would
    write into an empty placeholder and silently leave the random init in the shards.
    """
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            for p in params:
                nn.init.zeros_(p)
    else:
        for p in params:
            nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of continuous time t in [0, 1], scaled to the DDPM range [0, 1000] (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int, max_groups: int = 32, min_group_channels: int = 4) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides the channels, >= 4 channels per group.

    One channel per group would be instance norm: it removes each channel's spatial mean, so a flat region's
    absolute colour (a super-resolution model's low-res input, a base model's background) could not pass through.
    """
    groups = math.gcd(channels, max(1, min(max_groups, channels // min_group_channels)))
    return nn.GroupNorm(groups, channels)


class TextPooling(nn.Module):
    """Pooled text embedding added to the time embedding (Imagen Sec. 2.1, App. B: attention pooling)."""

    def __init__(self, text_dim: int, out_dim: int, mode: str = "attention", num_heads: int = 4):
        super().__init__()
        if mode not in ("attention", "mean"):
            raise ValueError(f"text pooling must be 'attention' or 'mean', got {mode!r}")
        self.mode = mode
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(text_dim)
        if mode == "attention":
            if text_dim % num_heads:
                raise ValueError(f"text_dim {text_dim} must be divisible by pooling heads {num_heads}")
            self.query = nn.Parameter(torch.randn(text_dim) / math.sqrt(text_dim))
            # A learned null token is always attended, so an all-masked (dropped) caption is well defined.
            self.null_token = nn.Parameter(torch.zeros(1, 1, text_dim))
            self.to_kv = nn.Linear(text_dim, 2 * text_dim, bias=False)
        self.proj = nn.Sequential(nn.Linear(text_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, text_embeds: Tensor, text_mask: Tensor) -> Tensor:
        return cached(self, "pooled", (text_embeds, text_mask), lambda: self._pool(text_embeds, text_mask))

    def _pool(self, text_embeds: Tensor, text_mask: Tensor) -> Tensor:
        x = self.norm(text_embeds)
        if self.mode == "mean":
            w = text_mask.to(x.dtype)[..., None]  # (B, L, 1)
            pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
            return self.proj(pooled)
        b = x.shape[0]
        x = torch.cat([self.null_token.expand(b, -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + L, D)
        mask = F.pad(text_mask, (1, 0), value=True)  # (B, 1 + L)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q = self.query.to(x.dtype).expand(b, 1, -1)
        q, k, v = (rearrange(y, "b n (h d) -> b h n d", h=self.num_heads) for y in (q, k, v))
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, h, 1, d)
        return self.proj(rearrange(pooled, "b h 1 d -> b (h d)"))


class ResBlock(nn.Module):
    """Residual block (Imagen App. B.1, Fig. A.27); with emb_dim, BigGAN-style scale-shift conditioning on it."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim is not None else None
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, impl: str = "sdpa") -> Tensor:
    """softmax(q k^T / sqrt(d)) v on (B, heads, N, d) tensors: fused SDPA, or the plain math for comparison."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if impl != "math":
        raise ValueError(f"attention impl must be 'sdpa' or 'math', got {impl!r}")
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


@functools.lru_cache(maxsize=32)  # a constant per (size, device, dtype): made once, not at every attention call
def position_features(height: int, width: int, bands: int, device, dtype) -> Tensor:
    """Fourier features of each token's centre in [0, 1]^2: sin and cos of 2^k pi y and 2^k pi x -> (H*W, 4 bands)."""
    with torch.inference_mode(False):  # cached: never an inference tensor that training could not save
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (HW, 2): y, x
        angles = grid[:, :, None] * (math.pi * 2.0 ** torch.arange(bands, device=device))  # (HW, 2, bands)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(height * width, 4 * bands).to(dtype)


class TextAttention(nn.Module):
    """Self-attention whose keys/values also hold the text tokens (Imagen App. D.3.1); LayerNorm on the text.

    self_attention=False keeps only the text tokens as keys/values: plain cross-attention (the SR 1024 model).
    """

    def __init__(
        self,
        channels: int,
        text_dim: int | None,
        head_dim: int = 64,
        self_attention: bool = True,
        impl: str = "sdpa",
        position_bands: int = 0,
    ):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} must be divisible by head_dim {head_dim}")
        if position_bands < 0:
            raise ValueError(f"position_bands must be >= 0, got {position_bands}")
        # Where each image token sits, added to the queries' and keys' input: convolutions with zero padding barely
        # tell a token where it is, and "a red circle to the left of a blue square" needs exactly that.
        self.position_bands = position_bands
        self.position = nn.Linear(4 * position_bands, channels) if position_bands else None
        if not self_attention and text_dim is None:
            raise ValueError("cross-attention without self-attention needs a text_dim")
        self.num_heads = channels // head_dim
        self.self_attention = self_attention
        self.impl = impl
        self.norm = group_norm(channels)
        # One fused projection for q, k, v with self-attention; q alone for pure cross-attention.
        self.to_qkv = nn.Conv2d(channels, (3 if self_attention else 1) * channels, 1, bias=False)
        if text_dim is not None:
            self.text_norm = nn.LayerNorm(text_dim)
            self.text_to_kv = nn.Linear(text_dim, 2 * channels, bias=False)
            # Always-attended learned null key/value: a dropped (fully masked) caption stays well defined.
            self.null_kv = nn.Parameter(torch.zeros(2, channels))
        self.out = zero_init_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, text_embeds: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        if self.position is not None:
            pos = self.position(position_features(hgt, wid, self.position_bands, x.device, h.dtype))  # (HW, C)
            h = h + rearrange(pos, "(x y) c -> 1 c x y", x=hgt).to(h.dtype)
        qkv = rearrange(self.to_qkv(h), "b c x y -> b (x y) c")  # (B, HW, 3C) or (B, HW, C)
        ks, vs = [], []
        if self.self_attention:
            q, k, v = qkv.chunk(3, dim=-1)  # (B, HW, C) each
            ks, vs = [k], [v]
        else:
            q = qkv
        text_keys = 0
        if text_embeds is not None and hasattr(self, "text_to_kv"):
            tk, tv = cached(self, "kv", (text_embeds,),  # (B, L, C) each
                            lambda: self.text_to_kv(self.text_norm(text_embeds)).to(q.dtype).chunk(2, dim=-1))
            nk, nv = (n.to(q.dtype).expand(b, 1, c) for n in self.null_kv)  # (B, 1, C)
            ks += [nk, tk]
            vs += [nv, tv]
            text_keys = tk.shape[1]
        if not ks:
            raise ValueError("cross-attention-only block called without text embeddings")
        k, v = torch.cat(ks, dim=1), torch.cat(vs, dim=1)  # (B, M, C), M = [HW] + [1 + L]
        # No mask unless a text token is padded (text_mask None means none is): SDPA may then use its flash kernel.
        mask = None
        if text_keys and text_mask is not None:
            mask = cached(self, "mask", (text_mask,),  # (B, 1, 1, M): image tokens and null always kept
                          lambda: F.pad(text_mask, (k.shape[1] - text_keys, 0), value=True)[:, None, None, :])
        q, k, v = (rearrange(y, "b n (h d) -> b h n d", h=self.num_heads) for y in (q, k, v))
        out = attention(q, k, v, mask, self.impl)  # (B, heads, HW, d)
        return x + self.out(rearrange(out, "b h (x y) d -> b (h d) x y", x=hgt, y=wid))


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


TEXT_ATTENTION_MODES = ("concat", "cross", "none")


class AttentionStack(nn.Module):
    """The attention after a block, by text-attention mode (Imagen App. D.3.1 ablation):
    concat: text tokens join the self-attention keys/values; cross: self-attention then separate
    cross-attention; none: self-attention only (text enters through the pooled embedding)."""

    def __init__(
        self,
        channels: int,
        text_dim: int | None,
        mode: str = "concat",
        self_attention: bool = True,
        head_dim: int = 64,
        impl: str = "sdpa",
        position_bands: int = 0,
    ):
        super().__init__()
        if mode not in TEXT_ATTENTION_MODES:
            raise ValueError(f"text_attention must be one of {TEXT_ATTENTION_MODES}, got {mode!r}")
        def layer(text: int | None, with_self: bool) -> TextAttention:
            return TextAttention(channels, text, head_dim, self_attention=with_self, impl=impl,
                                 position_bands=position_bands)

        layers: list[nn.Module] = []
        if mode == "concat" and (self_attention or text_dim is not None):
            layers.append(layer(text_dim, self_attention))
        elif mode == "cross":
            layers += [layer(None, True)] if self_attention else []
            layers += [layer(text_dim, False)] if text_dim is not None else []
        elif mode == "none" and self_attention:
            layers.append(layer(None, True))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, text_embeds, text_mask)
        return x


class TextProjection(nn.Module):
    """One shared LayerNorm + linear map of the text tokens to the U-Net's conditioning width, used by the
    pooling and every attention layer (so T5-XXL's 4096-d tokens are not projected per layer)."""

    def __init__(self, text_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, out_dim)

    def forward(self, text_embeds: Tensor) -> Tensor:
        return cached(self, "projected", (text_embeds,), lambda: self.proj(self.norm(text_embeds)))


class ConditionEmbedding(nn.Module):
    """Time embedding + pooled text (Imagen Sec. 2.1) + noise-augmentation level for SR stages (Sec. 2.4)."""

    def __init__(self, base_dim: int, emb_dim: int, text_dim: int | None, pooling: str, aug_level: bool):
        super().__init__()
        self.base_dim = base_dim
        self.time_mlp = nn.Sequential(nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.aug_mlp = (
            nn.Sequential(nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if aug_level else None
        )
        self.text_pool = TextPooling(text_dim, emb_dim, pooling) if text_dim is not None else None

    def forward(
        self, t: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None, aug_level: Tensor | None, dtype
    ) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_dim).to(dtype))
        if self.aug_mlp is not None:
            if aug_level is None:
                raise ValueError("this U-Net is a super-resolution model: pass aug_level [B] with lowres")
            emb = emb + self.aug_mlp(timestep_embedding(aug_level, self.base_dim).to(dtype))
        if text_embeds is not None and self.text_pool is not None:
            emb = emb + self.text_pool(text_embeds, text_mask)
        return emb
