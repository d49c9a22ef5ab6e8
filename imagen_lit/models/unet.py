"""Text-conditioned U-Net for the base stage (Imagen Sec. 2.1, App. B; Improved DDPM-style layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from imagen_lit.models.layers import (
    Downsample,
    ResBlock,
    TextAttention,
    TextPooling,
    Upsample,
    group_norm,
    timestep_embedding,
)


class UNet(nn.Module):
    """U-Net eps/v/x0 predictor conditioned on time, pooled text and the text sequence (Imagen App. B)."""

    def __init__(
        self,
        image_size: int,
        text_dim: int | None,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int | Sequence[int] = 2,
        attn_resolutions: Sequence[int] = (16, 8),
        head_dim: int = 32,
        text_pooling: str = "attention",
        dropout: float = 0.0,
    ):
        super().__init__()
        levels = len(channel_mults)
        blocks = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(blocks) != levels:
            raise ValueError(f"num_res_blocks has {len(blocks)} entries for {levels} channel_mults")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} for {levels} levels")
        self.image_size = image_size
        self.in_channels = in_channels
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.text_pool = TextPooling(text_dim, emb_dim, text_pooling) if text_dim is not None else None

        def attn(ch: int, res: int) -> nn.Module | None:
            return TextAttention(ch, text_dim, head_dim) if res in attn_resolutions else None

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch, res = base_channels, image_size
        for i, mult in enumerate(channel_mults):
            out_ch = base_channels * mult
            for _ in range(blocks[i]):
                self.down.append(_Block(ResBlock(ch, out_ch, emb_dim, dropout), attn(out_ch, res)))
                ch = out_ch
                skip_chs.append(ch)
            if i < levels - 1:
                self.down.append(Downsample(ch, ch))
                skip_chs.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [
                _Block(ResBlock(ch, ch, emb_dim, dropout), TextAttention(ch, text_dim, head_dim)),
                _Block(ResBlock(ch, ch, emb_dim, dropout), None),
            ]
        )
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            out_ch = base_channels * mult
            for _ in range(blocks[i] + 1):
                self.up.append(_Block(ResBlock(ch + skip_chs.pop(), out_ch, emb_dim, dropout), attn(out_ch, res)))
                ch = out_ch
            if i > 0:
                self.up.append(Upsample(ch, ch))
                res *= 2
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, x: Tensor, t: Tensor, text_embeds: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        """Predict the diffusion target for x_t at times t [B] given text embeds [B, L, D] and mask [B, L]."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))
        if text_embeds is not None:
            if text_mask is None:
                text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
            if self.text_pool is not None:
                emb = emb + self.text_pool(text_embeds, text_mask)
        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, text_embeds, text_mask)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, text_embeds, text_mask)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, text_embeds, text_mask)
        return self.out(h)


class _Block(nn.Module):
    """A residual block optionally followed by text attention; downsampling passes through unchanged."""

    def __init__(self, res: ResBlock, attn: nn.Module | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, text_embeds, text_mask)
        return x
