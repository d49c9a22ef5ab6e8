"""Networks as plain nn.Modules."""

from imagen_lit.models.efficient_unet import EfficientUNet
from imagen_lit.models.ema import EMA
from imagen_lit.models.unet import UNet

__all__ = ["EMA", "EfficientUNet", "UNet"]
