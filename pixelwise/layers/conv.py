"""Small convolutional building blocks shared by the models."""
from __future__ import annotations

import torch.nn as nn
from pixelwise.errors import ConfigError

__all__ = ["ConvBNReLU", "DoubleConv"]


class ConvBNReLU(nn.Sequential):
    """Convolution, optional batch norm, ReLU.

    padding=True keeps the spatial size (stride 1, odd kernel); padding=False is a "valid"
    convolution that shrinks each side by kernel_size - 1.
    x: (B, in_ch, H, W) -> (B, out_ch, H', W')
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        padding: bool = True,
        batch_norm: bool = False,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ConfigError(f"ConvBNReLU: kernel_size={kernel_size}, expected an odd size")
        layers: list[nn.Module] = [
            # A bias is redundant in front of batch norm, which has its own shift.
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2 if padding else 0, bias=not batch_norm)
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_ch = in_ch
        self.out_ch = out_ch


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional batch norm and) a ReLU.

    The U-Net building block (Ronneberger et al. 2015, section 2). Unpadded, each side shrinks by 4.
    x: (B, in_ch, H, W) -> (B, out_ch, H', W') with H' = H if padding else H - 4
    """

    def __init__(self, in_ch: int, out_ch: int, *, padding: bool, batch_norm: bool) -> None:
        super().__init__(
            ConvBNReLU(in_ch, out_ch, 3, padding=padding, batch_norm=batch_norm),
            ConvBNReLU(out_ch, out_ch, 3, padding=padding, batch_norm=batch_norm),
        )
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.shrink = 0 if padding else 4
