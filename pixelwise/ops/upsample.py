"""Bilinear upsampling kernels and the coordinate bookkeeping that aligns maps of different strides.

A map "placed" at (stride, offset) has its index i centred on input pixel stride * i + offset.
Convolutions, poolings and transposed convolutions move that placement by simple rules, so the
crop that aligns two maps (FCN skip fusion) or a map with the image (the final crop) is computed
for any padding and any input size instead of being hard-coded (FCN section 4.2, the Caffe crop
layer's offsets 5, 9 and 19/27/31 for the pad-100 network come out of the same rules).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Placement", "align_to", "bilinear_kernel", "crop_to_image"]


def bilinear_kernel(factor: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2f, 2f) kernel of a stride-f transposed convolution that interpolates bilinearly.

    FCN section 3.3: "upsampling with factor f is convolution with a fractional input stride of
    1/f ... initialized to bilinear interpolation"; the kernel is Caffe's (size 2f, centre (2f-1)/2),
    so interior outputs sample the coarse map's linear interpolant at 1/(2f) + k/f.
    """
    if factor < 1:
        raise ValueError(f"bilinear_kernel: factor={factor}, expected an integer >= 1")
    size = 2 * factor
    centre = (size - 1) / 2
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    return torch.outer(ramp, ramp).to(dtype)


@dataclass(frozen=True)
class Placement:
    """Index i of a map is centred on input pixel `stride * i + offset` (same for rows and columns)."""

    stride: float = 1.0
    offset: float = 0.0

    def conv(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> "Placement":
        """After a convolution or pooling window (ceil_mode only adds outputs at the end)."""
        return Placement(self.stride * stride, self.offset + self.stride * ((kernel - 1) * dilation / 2 - padding))

    def transposed(self, kernel: int, stride: int, padding: int = 0) -> "Placement":
        """After a transposed convolution: output o comes from input (o + padding - (kernel-1)/2) / stride."""
        s = self.stride / stride
        return Placement(s, self.offset + s * (padding - (kernel - 1) / 2))


def align_to(x: torch.Tensor, placement: Placement, size: tuple[int, int], reference: Placement) -> torch.Tensor:
    """(B, C, h, w) map x resampled onto the grid of a (size[0], size[1]) map placed at `reference`.

    Both maps have the same stride; x is cropped where it extends beyond the reference and padded
    with zeros where it does not reach it (Caffe's crop layer, plus the padding a "same"-padded net
    can need at its bottom and right borders).
    """
    if placement.stride != reference.stride:
        raise ValueError(f"cannot align maps of strides {placement.stride} and {reference.stride}")
    k = (reference.offset - placement.offset) / placement.stride  # reference[i] ~ x[i + k]
    if abs(k - round(k)) > 1e-6:
        raise ValueError(
            f"maps at offsets {placement.offset} and {reference.offset} (stride {placement.stride}) do not share pixels"
        )
    k = round(k)
    h, w = size
    if k >= min(x.shape[-2:]) or k + min(h, w) <= 0:
        raise ValueError(f"a map of shape {tuple(x.shape)} does not overlap the {h}x{w} map it must be aligned to")
    return F.pad(x, (-k, w + k - x.shape[-1], -k, h + k - x.shape[-2]))


def crop_to_image(x: torch.Tensor, placement: Placement, size: tuple[int, int], *, pad: bool = False) -> torch.Tensor:
    """The (B, C, H, W) window of a stride-1 map that lies on the input image.

    The map must cover the image, unless `pad` allows zeros where it does not.
    """
    k = round(-placement.offset)
    if placement.stride != 1 or k != -placement.offset:
        raise ValueError(f"a map placed at {placement} does not lie on the input's pixel grid")
    h, w = size
    if pad:
        return align_to(x, placement, size, Placement())
    if k < 0 or x.shape[-2] < k + h or x.shape[-1] < k + w:
        raise ValueError(f"output of shape {tuple(x.shape)} at offset {k} does not cover an input of size {h}x{w}")
    return x[..., k : k + h, k : k + w]
