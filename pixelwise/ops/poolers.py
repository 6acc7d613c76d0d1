"""RoI feature extraction: RoIAlign, RoIPool and RoIWarp on one level (C4) or on an FPN pyramid.

The three methods are the rows of Mask R-CNN Table 2c:

- ``roi_align`` (Mask R-CNN section 3, "RoIAlign"): no quantisation; each output bin averages
  bilinear samples (sampling_ratio x sampling_ratio per bin, or ceil(roi_size / output_size)
  when sampling_ratio <= 0). pixelwise.ops.roi_align: torchvision.ops.roi_align's values, as one
  multi-threaded gather that also runs in bf16.
- ``roi_pool`` (Fast R-CNN section 2.1): box edges rounded to the feature grid, bins quantised,
  max inside each bin. torchvision.ops.roi_pool.
- ``roi_warp`` (Dai et al., MNC section 3.2): box edges rounded to the feature grid as RoIPool
  does, then the quantised box is resampled bilinearly. Defined here as RoIAlign (aligned=False,
  same sampling_ratio, average) on the box whose edges are round(edge * spatial_scale) /
  spatial_scale, rounding halves away from zero like RoIPool's C++ `round`.

Boxes are (x1, y1, x2, y2) in image pixels; `spatial_scale` = 1 / stride maps them to a level.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import roi_pool

from pixelwise.ops.roi_align import roi_align

__all__ = ["METHODS", "map_levels", "roi_features"]

METHODS = ("roi_align", "roi_pool", "roi_warp")


def map_levels(
    boxes: torch.Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> torch.Tensor:
    """(N,) int64 pyramid level in [k_min, k_max] for each box (N, 4).

    FPN eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)), clamped. Same arithmetic as torchvision's
    `LevelMapper` (k0 = 4, 224, eps = 1e-6), which returns k - k_min instead of k.
    """
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return levels.clamp(min=k_min, max=k_max).to(torch.int64)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _pool(
    feature: torch.Tensor,
    rois: torch.Tensor,
    method: str,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """(K, C, *output_size) from feature (B, C, H, W) and rois (K, 5) = (batch index, x1, y1, x2, y2)."""
    if method == "roi_pool":
        # torchvision's roi_pool has no bf16 CPU kernel: bf16 / fp16 maps (the fast path) are pooled in the boxes'
        # float32 and returned in their own dtype.
        return roi_pool(feature.to(rois.dtype), rois, output_size, spatial_scale).to(feature.dtype)
    if method == "roi_warp":
        rois = torch.cat([rois[:, :1], _round_half_away(rois[:, 1:] * spatial_scale) / spatial_scale], dim=1)
        aligned = False
    # RoIAlign gathers in the map's own dtype (bf16 on the fast path), with float32 coordinates and weights.
    return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_features(
    features: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    *,
    method: str = "roi_align",
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> torch.Tensor:
    """(sum N_i, C, h, w) features of the boxes, in the order of torch.cat(boxes).

    features: one (B, C, H_l, W_l) map per level, finest first, with spatial_scales[l] = 1 / stride_l
    (powers of two, consecutive levels); boxes: B tensors (N_i, 4) in image pixels. With one level
    every box is pooled from it (C4); with several, box i comes from level `map_levels` (FPN eq. 1),
    where level k has scale 2^-k. For method="roi_align" this equals torchvision's
    `MultiScaleRoIAlign` (torchvision uses sampling_ratio=2, aligned=False); sampling_ratio <= 0 is
    adaptive; `aligned` (the half-pixel shift of detectron2's ROIAlignV2) applies to roi_align only.
    """
    if method not in METHODS:
        raise ValueError(f"roi_features: method={method!r}, expected one of {METHODS}")
    if len(features) != len(spatial_scales) or not features:
        raise ValueError(
            f"roi_features: {len(features)} feature maps and {len(spatial_scales)} spatial_scales, "
            "expected one scale per map and at least one map"
        )
    if len(boxes) != features[0].shape[0]:
        raise ValueError(f"roi_features: {len(boxes)} box tensors for a batch of {features[0].shape[0]} images")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    first = features[0]
    # Boxes stay at least float32 with bf16 features: bf16 coordinates near 500 px are 2 px apart.
    cat = torch.cat(list(boxes)).to(torch.promote_types(first.dtype, torch.float32))
    index = torch.cat([torch.full((len(b), 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)])
    rois = torch.cat([index, cat], dim=1)
    if len(features) == 1:
        return _pool(first, rois, method, size, spatial_scales[0], sampling_ratio, aligned)

    k_min = round(-math.log2(spatial_scales[0]))
    k_max = round(-math.log2(spatial_scales[-1]))
    if k_max - k_min + 1 != len(features):
        raise ValueError(
            f"roi_features: spatial_scales={list(spatial_scales)} are not {len(features)} consecutive powers of 1/2"
        )
    levels = map_levels(cat, k_min, k_max, canonical_scale, canonical_level) - k_min
    result = first.new_zeros((len(rois), first.shape[1], *size))
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.where(levels == level)[0]
        result[idx] = _pool(feature, rois[idx], method, size, scale, sampling_ratio, aligned).to(result.dtype)
    return result
