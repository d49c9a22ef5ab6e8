"""U-Net building blocks: time embedding, text pooling, residual blocks and attention with text (Imagen App. B)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of continuous time t in [0, 1], scaled to the DDPM range [0, 1000] (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides the channels."""
    groups = math.gcd(channels, max_groups)
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
    """BigGAN-style residual block with scale-shift conditioning on the embedding (Imagen App. B.1, Fig. A.27)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, skip_scale: float = 1.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.skip_scale = skip_scale

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (h + self.skip(x)) * self.skip_scale


class TextAttention(nn.Module):
    """Self-attention whose keys/values also hold the text tokens (Imagen App. D.3.1); LayerNorm on the text."""

    def __init__(self, channels: int, text_dim: int | None, head_dim: int = 64):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} must be divisible by head_dim {head_dim}")
        self.num_heads = channels // head_dim
        self.norm = group_norm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        if text_dim is not None:
            self.text_norm = nn.LayerNorm(text_dim)
            self.text_to_kv = nn.Linear(text_dim, 2 * channels, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, text_embeds: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = rearrange(self.to_qkv(self.norm(x)), "b c x y -> b (x y) c").chunk(3, dim=-1)  # (B, HW, C)
        mask = None
        if text_embeds is not None and hasattr(self, "text_to_kv"):
            tk, tv = self.text_to_kv(self.text_norm(text_embeds)).chunk(2, dim=-1)  # (B, L, C)
            k, v = torch.cat([k, tk.to(k.dtype)], dim=1), torch.cat([v, tv.to(v.dtype)], dim=1)  # (B, HW + L, C)
            # Image tokens are always attended, so a fully masked (dropped) caption is still well defined.
            mask = F.pad(text_mask, (hgt * wid, 0), value=True)[:, None, None, :]  # (B, 1, 1, HW + L)
        q, k, v = (rearrange(y, "b n (h d) -> b h n d", h=self.num_heads) for y in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, HW, d)
        h = rearrange(h, "b h (x y) d -> b (h d) x y", x=hgt, y=wid)
        return x + self.out(h)


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
