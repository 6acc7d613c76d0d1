"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation").

The valid-convolution network of the paper (section 2, Fig. 1) and a padded variant whose output has
the size of its input. `UNet.output_size` / `UNet.input_size_for` give the engine the size arithmetic
it needs for overlap-tile inference and for aligning targets with the smaller output.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.layers.conv import DoubleConv
from pixelwise.registry import register_model
from pixelwise.errors import ConfigError

__all__ = ["UNet", "unet", "unet_padded"]


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, C, height, width), the centre of x."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class UNet(nn.Module):
    """Contracting path, bottleneck and expanding path with crop-and-concatenate skips.

    Level i of the contracting path has base_width * 2**i channels; level `depth` is the bottleneck.
    images: (B, in_channels, H, W) -> logits: (B, num_classes, H', W') with
    H' = output_size(H), W' = output_size(W).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        in_channels: int = 1,
        base_width: int = 64,
        depth: int = 4,
        padding: bool = False,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("in_channels", in_channels, 1),
            ("base_width", base_width, 1),
            ("depth", depth, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"UNet: {name}={value!r}, expected an integer >= {low}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"UNet: dropout={dropout!r}, expected a probability in [0, 1)")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.base_width = base_width
        self.depth = depth
        self.padding = padding
        self.widths = [base_width * 2**i for i in range(depth + 1)]

        block = dict(padding=padding, batch_norm=batch_norm)
        self.down = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else self.widths[i - 1], self.widths[i], **block)
            for i in range(depth + 1)
        )
        # Section 3.1 "drop-out layers at the end of the contracting path": as in the authors'
        # released Caffe model, after the last two contracting levels (d3c, d4c with the defaults).
        self.dropout = nn.ModuleList(
            nn.Dropout(dropout) if i >= depth - 1 and dropout > 0 else nn.Identity() for i in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2, stride=2)
        # Expanding path from the bottleneck up: 2x2 up-convolution halving the channels, then
        # concatenation with the cropped contracting map and a DoubleConv.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(self.widths[i + 1], self.widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.up_blocks = nn.ModuleList(
            DoubleConv(2 * self.widths[i], self.widths[i], **block) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(base_width, num_classes, 1)

        self.size_step = 2**depth
        self.min_input_size = 1
        while self._trace(self.min_input_size) is None:
            self.min_input_size += 1
        self._init_weights()

    def _init_weights(self) -> None:
        # Section 3: Gaussian with std sqrt(2/N), N = incoming nodes of one neuron (k*k*in_channels
        # for a convolution). A stride-s transposed convolution feeds each output pixel from
        # (k/s)**2 * in_channels inputs, i.e. in_channels for the 2x2 stride-2 up-convolution.
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                kh, kw = m.kernel_size
                sh, sw = m.stride
                fan_in = m.in_channels // m.groups * max(kh // sh, 1) * max(kw // sw, 1)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            else:
                continue
            nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _trace(self, size: int) -> int | None:
        """Output side for an input side, or None if a layer would see an odd or empty map."""
        shrink = 0 if self.padding else 4
        s = size
        for _ in range(self.depth):
            s -= shrink
            if s < 1 or s % 2:
                return None
            s //= 2
        s -= shrink
        if s < 1:
            return None
        for _ in range(self.depth):
            s = 2 * s - shrink
            if s < 1:
                return None
        return s

    def _describe(self) -> str:
        kind = "padded" if self.padding else "valid-convolution"
        return f"this {kind} U-Net (depth {self.depth})"

    def _invalid(self, size: int, what: str) -> ValueError:
        lo, step = self.min_input_size, self.size_step
        if size < lo:
            nearest = f"the smallest valid size is {lo}"
        else:
            below = lo + (size - lo) // step * step
            nearest = f"nearest valid sizes are {below} and {below + step}"
        return ValueError(
            f"{what} {size} is not a valid input size for {self._describe()}: {nearest} "
            f"(valid sizes are {lo} + k*{step})"
        )

    def output_size(self, input_size: int) -> int:
        """Spatial output side for an input side; 572 -> 388 for the paper's network (Fig. 1).

        Raises ValueError, naming the nearest valid sizes, if the side is odd before a pooling or
        any map would become empty.
        """
        out = self._trace(int(input_size))
        if out is None:
            raise self._invalid(int(input_size), "input side")
        return out

    def input_size_for(self, output_size: int) -> int:
        """Smallest valid input side whose output side is >= output_size (388 -> 572 by default)."""
        if output_size < 1:
            raise ConfigError(f"output_size={output_size!r}, expected a positive integer")
        lo, step = self.min_input_size, self.size_step
        # Valid inputs are lo + k*step, and each step adds exactly `step` to the output side.
        k = max(0, math.ceil((output_size - self.output_size(lo)) / step))
        return lo + k * step

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, in_channels, H, W) -> logits: (B, num_classes, output_size(H), output_size(W))."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ConfigError(
                f"UNet: images of shape {tuple(images.shape)}, expected (B, {self.in_channels}, H, W)"
            )
        for what, size in (("height", images.shape[-2]), ("width", images.shape[-1])):
            # Exported graphs have symbolic sizes; `pixelwise export` documents the size rule instead.
            if not torch.compiler.is_exporting() and self._trace(int(size)) is None:
                raise self._invalid(int(size), f"image {what}")

        skips = []
        x = images
        for i, (block, drop) in enumerate(zip(self.down, self.dropout)):
            if i > 0:
                x = self.pool(x)
            x = drop(block(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip
        for up, block in zip(self.up, self.up_blocks):
            # ReLU after the up-convolution as in the authors' released Caffe model (relu_u3a ...).
            x = F.relu(up(x))
            skip = skips.pop()
            # Padded: the sizes already match (the input side is a multiple of 2**depth), and a crop of
            # symbolic sizes is a data-dependent slice that torch.export cannot trace.
            if not self.padding:
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


@register_model
def unet(
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    base_width: int = 64,
    depth: int = 4,
    padding: bool = False,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> UNet:
    """U-Net of the paper: valid 3x3 convolutions, output smaller than input (572 -> 388).

    Ronneberger et al. 2015, section 2 and Fig. 1; He-normal initialisation (section 3), dropout at
    the end of the contracting path (section 3.1). Use overlap-tile inference for large images.
    """
    return UNet(
        num_classes=num_classes,
        in_channels=in_channels,
        base_width=base_width,
        depth=depth,
        padding=padding,
        dropout=dropout,
        batch_norm=batch_norm,
    )


@register_model
def unet_padded(
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    base_width: int = 64,
    depth: int = 4,
    padding: bool = True,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> UNet:
    """U-Net with padded 3x3 convolutions: output size = input size (a multiple of 2**depth).

    Same layers and channel widths as `unet`; only the convolution padding differs.
    """
    return UNet(
        num_classes=num_classes,
        in_channels=in_channels,
        base_width=base_width,
        depth=depth,
        padding=padding,
        dropout=dropout,
        batch_norm=batch_norm,
    )
