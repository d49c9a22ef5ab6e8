"""What every U-Net does first (Imagen App. B): the text side once per call, the conditioning embedding, and the
input convolution (with the low-res image for super-resolution stages)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from imagen_lit.models.layers import ConditionEmbedding, TextProjection, position_features, zero_init_
from imagen_lit.models.text_cache import cached
from imagen_lit.models.text_refiner import TextRefiner, token_positions


class UNetInputs(nn.Module):
    """What every U-Net does first: project the text once (and refine it with `text_layers` trainable transformer
    blocks, if any), embed time + pooled text (+ aug level), concatenate the upsampled low-res image for SR models
    (and, with `input_position_bands`, Fourier features of each pixel's place: CoordConv, Liu et al. 2018), and apply
    the input convolution."""

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        emb_dim: int,
        text_dim: int | None,
        text_proj_dim: int | None,
        text_pooling: str,
        lowres_cond: bool,
        text_layers: int = 0,
        input_position_bands: int = 0,
        token_position_dim: int = 0,
    ):
        super().__init__()
        if token_position_dim < 0 or token_position_dim % 2:
            raise ValueError(f"token_position_dim must be an even number >= 0, got {token_position_dim}")
        if text_layers < 0:
            raise ValueError(f"text_layers must be >= 0, got {text_layers}")
        if input_position_bands < 0:
            raise ValueError(f"input_position_bands must be >= 0, got {input_position_bands}")
        self.input_position_bands = input_position_bands
        self.lowres_cond = lowres_cond
        self.text_proj = TextProjection(text_dim, text_proj_dim) if text_dim and text_proj_dim else None
        self.text_dim = text_proj_dim if self.text_proj is not None else text_dim  # what attention layers see
        if text_layers and not text_dim:
            raise ValueError("text_layers > 0 needs a text-conditioned U-Net (text_dim set)")
        self.text_refiner = TextRefiner(self.text_dim, text_layers) if text_layers else None
        # Each token's place in the caption, added to it: "the first-named object goes left" becomes one attention
        # hop (image query . token place), whatever the frozen encoder's states say of roles. Starts at zero.
        if token_position_dim and not text_dim:
            raise ValueError("token_position_dim > 0 needs a text-conditioned U-Net (text_dim set)")
        self.token_position = (zero_init_(nn.Linear(token_position_dim, self.text_dim, bias=False))
                               if token_position_dim else None)
        self.cond = ConditionEmbedding(base_channels, emb_dim, self.text_dim, text_pooling, aug_level=lowres_cond)
        conv_in = in_channels * (2 if lowres_cond else 1) + 4 * input_position_bands
        self.conv = nn.Conv2d(conv_in, base_channels, 3, padding=1)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        lowres: Tensor | None,
        aug_level: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """-> (features [B, C, H, W], embedding [B, E], projected text [B, L, D'], text mask [B, L] or None).

        text_mask None means no token is padded: attention then runs unmasked (SDPA's flash kernel may serve it).
        """
        if text_embeds is not None and self.text_proj is not None:
            text_embeds = self.text_proj(text_embeds)
        if text_embeds is not None and self.token_position is not None:
            text_embeds = cached(self, "placed", (text_embeds,), lambda: self._add_token_positions(text_embeds))
        if text_embeds is not None and self.text_refiner is not None:
            text_embeds = self.text_refiner(text_embeds, text_mask)  # (B, L, D'): what pooling and attention see
        pool_mask = text_mask
        if text_embeds is not None and text_mask is None:
            pool_mask = cached(self, "ones", (text_embeds,), lambda: torch.ones(
                text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device))
        emb = self.cond(t, text_embeds, pool_mask, aug_level, x.dtype)
        h = lowres_input(x, lowres, self.lowres_cond)
        if self.input_position_bands:
            b, _, hgt, wid = h.shape
            pos = position_features(hgt, wid, self.input_position_bands, h.device, h.dtype)  # (HW, 4 bands)
            pos = rearrange(pos, "(y x) c -> 1 c y x", y=hgt).expand(b, -1, -1, -1)  # (B, 4 bands, H, W)
            h = torch.cat([h, pos], dim=1)
        return self.conv(h), emb, text_embeds, text_mask

    def _add_token_positions(self, text_embeds: Tensor) -> Tensor:
        """(B, L, D) tokens + a learned map of each place's sinusoidal code (Vaswani et al. 2017)."""
        codes = token_positions(text_embeds.shape[1], self.token_position.in_features, text_embeds.device,
                                text_embeds.dtype)  # (L, token_position_dim)
        return text_embeds + self.token_position(codes).to(text_embeds.dtype)  # (B, L, D)


def lowres_input(x: Tensor, lowres: Tensor | None, expected: bool) -> Tensor:
    """Concatenate the low-res conditioning image, upsampled to x's size, on channels (Imagen Sec. 2.4)."""
    if not expected:
        if lowres is not None:
            raise ValueError("lowres given to a U-Net built without lowres_cond")
        return x
    if lowres is None:
        raise ValueError("this U-Net is a super-resolution model: pass lowres [B, C, h, w]")
    if lowres.shape[0] != x.shape[0] or lowres.shape[1] != x.shape[1]:
        raise ValueError(f"lowres must be [B={x.shape[0]}, C={x.shape[1]}, h, w], got {tuple(lowres.shape)}")
    return torch.cat([x, upsample_lowres(lowres, x.shape[-2:]).to(x.dtype)], dim=1)


def upsample_lowres(lowres: Tensor, size) -> Tensor:
    """Bicubic upsampling of the low-res conditioning image to size (H, W); unchanged if it is that size already."""
    if tuple(lowres.shape[-2:]) == tuple(size):
        return lowres
    return F.interpolate(lowres, size=tuple(size), mode="bicubic", align_corners=False)
