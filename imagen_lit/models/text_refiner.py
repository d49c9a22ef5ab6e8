"""Trainable transformer layers over the frozen encoder's tokens, before the U-Net's pooling and attention (not in
Imagen, whose T5 output goes in as is; GLIDE trains its whole text transformer with the diffusion model).

A small frozen encoder states "which shape is the subject of 'left of'" only weakly in each token (a linear probe on
all-MiniLM-L6-v2 reads the side the other object must be on at 0.79, `experiments/text_probe.py`); a layer or two
trained with the diffusion loss can put what the layout needs into the very tokens the image attends to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen_lit.models.layers import zero_init_
from imagen_lit.models.text_cache import cached


def token_positions(length: int, dim: int, device, dtype) -> Tensor:
    """Sinusoidal position codes (Vaswani et al. 2017) of a caption's token places -> (L, dim)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = pos * freqs  # (L, dim / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(length, dim).to(dtype)


class RefinerBlock(nn.Module):
    """Pre-LayerNorm transformer block whose residual branches start at zero; positions enter queries and keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.to_qk = nn.Linear(dim, 2 * dim)
        self.to_v = nn.Linear(dim, dim)
        self.out = zero_init_(nn.Linear(dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), zero_init_(nn.Linear(4 * dim, dim)))

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, 1 + L, D), a null token first; positions (1 + L, D); mask (B, 1, 1, 1 + L) True = attend, or None."""
        h = self.norm1(x)
        q, k = self.to_qk(h + positions).chunk(2, dim=-1)  # (B, N, D) each
        v = self.to_v(h)
        q, k, v = (y.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for y in (q, k, v))  # (B, heads, N, d)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, N, d)
        x = x + self.out(attended.transpose(1, 2).flatten(2))  # (B, N, D)
        return x + self.mlp(self.norm2(x))


class TextRefiner(nn.Module):
    """`num_layers` trainable transformer blocks on the text tokens; the identity at initialisation."""

    def __init__(self, dim: int, num_layers: int, head_dim: int = 64):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"text_layers must be >= 1 for a TextRefiner, got {num_layers}")
        head_dim = head_dim if dim % head_dim == 0 else dim  # one head for widths like a tiny test encoder's
        # A learned token every query may attend to, so a dropped (all-masked) caption stays well defined.
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(RefinerBlock(dim, dim // head_dim) for _ in range(num_layers))

    def forward(self, text_embeds: Tensor, text_mask: Tensor | None) -> Tensor:
        """Tokens (B, L, D) and mask (B, L) or None (no padding) -> refined tokens (B, L, D)."""
        return cached(self, "refined", (text_embeds, text_mask), lambda: self._refine(text_embeds, text_mask))

    def _refine(self, text_embeds: Tensor, text_mask: Tensor | None) -> Tensor:
        b, length, dim = text_embeds.shape
        x = torch.cat([self.null_token.expand(b, -1, -1).to(text_embeds.dtype), text_embeds], dim=1)  # (B, 1+L, D)
        # No mask when no token is padded (the U-Net's convention): SDPA may then pick its fused kernel.
        mask = None if text_mask is None else F.pad(text_mask, (1, 0), value=True)[:, None, None, :]  # (B,1,1,1+L)
        positions = token_positions(length + 1, dim, x.device, x.dtype)  # (1 + L, D)
        for block in self.blocks:
            x = block(x, positions, mask)
        return x[:, 1:]  # (B, L, D): the null token dropped
