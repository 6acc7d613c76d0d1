"""Anchors of the region proposal network (Faster R-CNN section 3.1.1; FPN section 4.1).

An anchor of size s and aspect ratio r = h / w has area s^2: h = s sqrt(r), w = s / sqrt(r). Each
level tiles its cell anchors over the feature grid at offsets (0, stride, 2 stride, ...). This is
torchvision's `AnchorGenerator` convention (cell anchors rounded to integers, centred on the
top-left corner of each stride cell, order location-major then anchor, anchors ratio-major then
size), so RPN weights converted from torchvision see the same anchors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["C4_RATIOS", "C4_SIZES", "FPN_RATIOS", "FPN_SIZES", "cell_anchors", "grid_anchors"]

# FPN: one size per level P2..P6 (strides 4..64), three ratios everywhere (FPN section 4.1).
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_RATIOS = ((0.5, 1.0, 2.0),) * 5
# C4: 5 sizes x 3 ratios = 15 anchors on the single stride-16 map (Mask R-CNN with ResNet-C4).
C4_SIZES = ((32, 64, 128, 256, 512),)
C4_RATIOS = ((0.5, 1.0, 2.0),)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(len(aspect_ratios) * len(sizes), 4) float32 anchors centred on 0, ratio-major then size.

    round([-w, -h, w, h] / 2) in float32, exactly as torchvision's `AnchorGenerator.generate_anchors`.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32))
    ws = (1 / h_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[Sequence[float]],
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int | tuple[int, int]],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """One (H * W * A, 4) tensor of anchors per level, A = len(sizes[l]) * len(aspect_ratios[l]).

    Row (y * W + x) * A + a is cell anchor a shifted by (x * stride_w, y * stride_h).
    feature_sizes: (H, W) per level; strides: int or (stride_h, stride_w) per level. torchvision
    takes the stride as padded_image_size // feature_size, which is the nominal stride when the
    batch is padded to a multiple of the coarsest stride (its `size_divisible=32`).
    """
    if not len(sizes) == len(aspect_ratios) == len(feature_sizes) == len(strides):
        raise ValueError(
            f"grid_anchors: {len(sizes)} sizes, {len(aspect_ratios)} aspect_ratios, "
            f"{len(feature_sizes)} feature_sizes and {len(strides)} strides, expected one of each per level"
        )
    anchors = []
    for level_sizes, ratios, (height, width), stride in zip(sizes, aspect_ratios, feature_sizes, strides):
        stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
        base = cell_anchors(level_sizes, ratios).to(device=device, dtype=dtype)
        shift_y, shift_x = torch.meshgrid(
            torch.arange(height, device=device) * stride_h, torch.arange(width, device=device) * stride_w, indexing="ij"
        )
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
        anchors.append((shifts + base[None]).reshape(-1, 4))
    return anchors
