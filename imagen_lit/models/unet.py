"""The standard text-conditioned U-Net (Imagen App. B, D.3.1; Improved-DDPM layout with BigGAN residual blocks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from imagen_lit.models.inputs import UNetInputs
from imagen_lit.models.layers import (
    AttentionStack,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    zero_init_,
)


def run_block(block: nn.Module, use_checkpoint: bool, *args: Tensor | None) -> Tensor:
    """Call a block, recomputing its activations in backward when use_checkpoint (activation checkpointing)."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class UNet(nn.Module):
    """U-Net eps/v/x0 predictor conditioned on time, pooled text and the text sequence (Imagen App. B).

    lowres_cond=True makes it a super-resolution model: the upsampled low-res image is concatenated on channels
    and the noise-augmentation level is embedded and added to the time embedding (Imagen Sec. 2.4).
    """

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
        text_attention: str = "concat",
        lowres_cond: bool = False,
        text_proj_dim: int | None = None,
        dropout: float = 0.0,
        attention_impl: str = "sdpa",
        gradient_checkpointing: bool = False,
        text_layers: int = 0,
        input_position_bands: int = 0,
        token_position_dim: int = 0,
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
        self.lowres_cond = lowres_cond
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = 4 * base_channels
        self.inputs = UNetInputs(
            in_channels, base_channels, emb_dim, text_dim, text_proj_dim, text_pooling, lowres_cond, text_layers,
            input_position_bands, token_position_dim,
        )
        text_dim = self.inputs.text_dim

        def block(in_ch: int, out_ch: int, res: int, attend: bool | None = None) -> _Block:
            attend = res in attn_resolutions if attend is None else attend
            attn = AttentionStack(out_ch, text_dim, text_attention, True, head_dim, attention_impl) if attend else None
            return _Block(ResBlock(in_ch, out_ch, emb_dim, dropout), attn)

        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch, res = base_channels, image_size
        for i, mult in enumerate(channel_mults):
            for _ in range(blocks[i]):
                self.down.append(block(ch, base_channels * mult, res))
                ch = base_channels * mult
                skip_chs.append(ch)
            if i < levels - 1:
                self.down.append(Downsample(ch, ch))
                skip_chs.append(ch)
                res //= 2
        self.mid = nn.ModuleList([block(ch, ch, res, attend=True), block(ch, ch, res, attend=False)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(blocks[i] + 1):
                self.up.append(block(ch + skip_chs.pop(), base_channels * mult, res))
                ch = base_channels * mult
            if i > 0:
                self.up.append(Upsample(ch, ch))
                res *= 2
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init_(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        lowres: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> Tensor:
        """Predict the diffusion target for x_t at times t [B] given text embeds [B, L, D] and mask [B, L]."""
        h, emb, text_embeds, text_mask = self.inputs(x, t, text_embeds, text_mask, lowres, aug_level)
        ckpt = self.gradient_checkpointing and self.training
        skips = [h]
        for blk in self.down:
            h = blk(h) if isinstance(blk, Downsample) else run_block(blk, ckpt, h, emb, text_embeds, text_mask)
            skips.append(h)
        for blk in self.mid:
            h = run_block(blk, ckpt, h, emb, text_embeds, text_mask)
        for blk in self.up:
            if isinstance(blk, Upsample):
                h = blk(h)
            else:
                h = run_block(blk, ckpt, torch.cat([h, skips.pop()], dim=1), emb, text_embeds, text_mask)
        return self.out(h)


class _Block(nn.Module):
    """A residual block optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: nn.Module | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, text_embeds, text_mask)
        return x
