"""Efficient U-Net (Imagen App. B.1, Figs. A.28-A.30): parameters at low resolution, skips scaled by 1/sqrt(2),
downsampling before and upsampling after the convolutions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen_lit.models.inputs import UNetInputs, upsample_lowres
from imagen_lit.models.layers import (
    AttentionStack,
    ResBlock,
    group_norm,
    zero_init_,
)
from imagen_lit.models.unet import run_block

SKIP_SCALE = 1 / math.sqrt(2)


def _per_block(value: bool | Sequence[bool], n: int, name: str) -> list[bool]:
    values = [value] * n if isinstance(value, bool) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} blocks")
    return values


class CombineEmbs(nn.Module):
    """Add the conditioning embedding (time + pooled text [+ aug level]) to every channel (Fig. A.28)."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return x + self.proj(emb)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W


def _run_res_attn(
    res_blocks: nn.ModuleList, attns: nn.ModuleList, x: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None
) -> Tensor:
    """Residual blocks, with attention after each one (len(attns) == len(res)) or after the last (len 1)."""
    for i, res in enumerate(res_blocks):
        x = res(x)
        if len(attns) == len(res_blocks) or (len(attns) == 1 and i == len(res_blocks) - 1):
            x = attns[i if len(attns) > 1 else 0](x, text_embeds, text_mask)
    return x


class DBlock(nn.Module):
    """Strided conv -> combine embeddings -> residual blocks -> optional attention with text (Fig. A.28)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, num_res: int, stride: int, attns: list[nn.Module]):
        super().__init__()
        self.down = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.combine = CombineEmbs(emb_dim, out_ch)
        self.res = nn.ModuleList([ResBlock(out_ch, out_ch, None) for _ in range(num_res)])
        self.attns = nn.ModuleList(attns)

    def forward(self, x: Tensor, emb: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        return _run_res_attn(self.res, self.attns, self.combine(self.down(x), emb), text_embeds, text_mask)


class UBlock(nn.Module):
    """Combine embeddings -> residual blocks -> optional attention -> upsampling conv (Fig. A.29)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, num_res: int, stride: int, attns: list[nn.Module]):
        super().__init__()
        self.combine = CombineEmbs(emb_dim, 2 * in_ch)
        self.res = nn.ModuleList([ResBlock(2 * in_ch if i == 0 else in_ch, in_ch, None) for i in range(num_res)])
        self.attns = nn.ModuleList(attns)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=stride, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )

    def forward(self, x: Tensor, emb: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        return self.up(_run_res_attn(self.res, self.attns, self.combine(x, emb), text_embeds, text_mask))


class EfficientUNet(nn.Module):
    """Efficient U-Net (Imagen App. B.1): one DBlock/UBlock pair per resolution, more residual blocks at low ones.

    The U-Net skip from each DBlock to its UBlock is concatenated, scaled by 1/sqrt(2). With lowres_cond it is
    a super-resolution model (upsampled low-res image on channels, aug_level embedded; Imagen Sec. 2.4).
    Without self-attention it is fully convolutional plus text cross-attention, so a model trained on crops
    runs on whole images. position_bands > 0 (not in the paper) adds Fourier features of each token's place in the
    image to every attention layer's input, so spatial words can be tied to places; keep 0 for crop-trained stages,
    whose positions would be crop-relative. patch_size p > 1 (not in the paper; Hoogeboom et al. 2023 Sec. 3.3)
    folds each p x p patch of x_t (and of the low-res image) into channels before the input convolution and unfolds
    the output, so the whole network runs at image_size / p.
    """

    def __init__(
        self,
        image_size: int,
        text_dim: int | None,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        block_channels: Sequence[int] = (128, 256, 512, 1024),
        num_res_blocks: Sequence[int] = (2, 4, 8, 8),
        block_strides: Sequence[int] | None = None,
        self_attention: bool | Sequence[bool] = (False, False, False, True),
        text_cross_attention: bool | Sequence[bool] = (False, False, False, True),
        text_attention: str = "concat",
        attention_per_res_block: bool = False,
        num_heads: int = 8,
        text_pooling: str = "attention",
        lowres_cond: bool = False,
        text_proj_dim: int | None = None,
        attention_impl: str = "sdpa",
        gradient_checkpointing: bool = False,
        position_bands: int = 0,
        text_layers: int = 0,
        input_position_bands: int = 0,
        token_position_dim: int = 0,
        patch_size: int = 1,
    ):
        super().__init__()
        n = len(block_channels)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        strides = list(block_strides) if block_strides is not None else [2] * n
        if len(num_res_blocks) != n or len(strides) != n:
            raise ValueError(f"block_channels, num_res_blocks and block_strides need {n} entries each")
        if image_size % (patch_size * math.prod(strides)):
            raise ValueError(f"image_size {image_size} is not divisible by patch_size x the total stride "
                             f"{patch_size * math.prod(strides)}")
        attend_self = _per_block(self_attention, n, "self_attention")
        attend_text = _per_block(text_cross_attention, n, "text_cross_attention")
        self.image_size = image_size
        self.in_channels = in_channels
        self.lowres_cond = lowres_cond
        self.patch_size = patch_size
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = 4 * base_channels
        self.inputs = UNetInputs(
            in_channels * patch_size**2, base_channels, emb_dim, text_dim, text_proj_dim, text_pooling, lowres_cond,
            text_layers, input_position_bands, token_position_dim,
        )
        text_dim = self.inputs.text_dim

        def attns(i: int) -> list[nn.Module]:
            """No attention, one after the block's last residual block, or one after each of them."""
            if not (attend_self[i] or attend_text[i]):
                return []
            ch = block_channels[i]
            if ch % num_heads:
                raise ValueError(f"block channels {ch} must be divisible by num_heads {num_heads}")
            text = text_dim if attend_text[i] else None
            mode = text_attention if text is not None else "none"
            count = num_res_blocks[i] if attention_per_res_block else 1
            return [
                AttentionStack(ch, text, mode, attend_self[i], ch // num_heads, attention_impl, position_bands)
                for _ in range(count)
            ]

        ins = [base_channels, *block_channels[:-1]]
        self.down = nn.ModuleList(
            DBlock(ins[i], block_channels[i], emb_dim, num_res_blocks[i], strides[i], attns(i)) for i in range(n)
        )
        self.up = nn.ModuleList(
            UBlock(block_channels[i], ins[i], emb_dim, num_res_blocks[i], strides[i], attns(i))
            for i in reversed(range(n))
        )
        # Full-resolution skip: the input conv's features join the last UBlock's output, so the strided first
        # DBlock does not cost the network its full-resolution view of x_t.
        self.final = ResBlock(2 * base_channels, base_channels, None)
        self.out = nn.Sequential(
            group_norm(base_channels), nn.SiLU(),
            zero_init_(nn.Conv2d(base_channels, out_channels * patch_size**2, 3, padding=1)),
        )

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
        p = self.patch_size
        if p > 1:
            if x.shape[-1] % p or x.shape[-2] % p:
                raise ValueError(f"x of size {tuple(x.shape[-2:])} is not divisible by patch_size {p}")
            lowres = F.pixel_unshuffle(upsample_lowres(lowres, x.shape[-2:]), p) if lowres is not None else None
            x = F.pixel_unshuffle(x, p)  # (B, C, H, W) -> (B, C p^2, H / p, W / p)
        h, emb, text_embeds, text_mask = self.inputs(x, t, text_embeds, text_mask, lowres, aug_level)
        full_res = h
        ckpt = self.gradient_checkpointing and self.training
        skips = []
        for block in self.down:
            h = run_block(block, ckpt, h, emb, text_embeds, text_mask)
            skips.append(h)
        for block in self.up:
            h = torch.cat([h, skips.pop() * SKIP_SCALE], dim=1)  # (B, 2C, H, W)
            h = run_block(block, ckpt, h, emb, text_embeds, text_mask)
        h = self.final(torch.cat([h, full_res * SKIP_SCALE], dim=1))  # (B, 2 * base, H, W) -> (B, base, H, W)
        out = self.out(h)
        return F.pixel_shuffle(out, p) if p > 1 else out  # (B, C p^2, H / p, W / p) -> (B, C, H, W)
