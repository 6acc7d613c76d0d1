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

`RoIPooler` is the same as a module taking (features, rois); its `in_graph` is RoIAlign written for an exported
graph (pixelwise.export puts it in Mask R-CNN's RoI parts): torchvision.ops.roi_align, which the exporters turn into
ONNX `RoiAlign` and OpenVINO `ROIAlign`, once over an "atlas" of the pyramid's levels side by side, each with a
one-pixel replicated border, the RoIs moved onto their level (`atlas_rois`, in PyTorch before the graph; the
graph holds `on_atlas`, the atlas and its RoIAlign, whose boxes come straight from the graph's inputs, so no
coordinate passes through a runtime's bf16). One RoIAlign of the RoIs, with no shape that
depends on the data (a graph cannot split the RoIs by level without one), and the same values as `roi_features`
for boxes inside the image (Mask R-CNN clips proposals and detections to it): a sample on a level's last row or
column reads the border's copy of it, as torchvision clamps it. Equal to 1e-12 in float64; in float32 to about
1e-4 of unit-variance features, since a coordinate moved right by hundreds of pixels keeps fewer of its bits.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import roi_pool

from pixelwise.ops.roi_align import roi_align

__all__ = ["METHODS", "RoIPooler", "as_rois", "map_levels", "pool_rois", "roi_align_boxes", "roi_features"]

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


def roi_features(features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], **options) -> torch.Tensor:
    """(sum N_i, C, h, w) features of the boxes, in the order of torch.cat(boxes): pool_rois (options: method,
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level) on as_rois(boxes).

    features: one (B, C, H_l, W_l) map per level, finest first, with spatial_scales[l] = 1 / stride_l
    (powers of two, consecutive levels); boxes: B tensors (N_i, 4) in image pixels. With one level
    every box is pooled from it (C4); with several, box i comes from level `map_levels` (FPN eq. 1),
    where level k has scale 2^-k. For method="roi_align" this equals torchvision's
    `MultiScaleRoIAlign` (torchvision uses sampling_ratio=2, aligned=False); sampling_ratio <= 0 is
    adaptive; `aligned` (the half-pixel shift of detectron2's ROIAlignV2) applies to roi_align only.
    """
    if features and len(boxes) != features[0].shape[0]:
        raise ValueError(f"roi_features: {len(boxes)} box tensors for a batch of {features[0].shape[0]} images")
    return pool_rois(features, as_rois(boxes, features[0].dtype if features else torch.float32), **options)


def as_rois(boxes: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(sum N_i, 5) rows (batch index, x1, y1, x2, y2) of B tensors (N_i, 4), at least float32: bf16 coordinates
    near 500 px are 2 px apart."""
    cat = torch.cat(list(boxes)).to(torch.promote_types(dtype, torch.float32))
    index = torch.cat([torch.full((len(b), 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)])
    return torch.cat([index, cat], dim=1)


def _levels(spatial_scales: Sequence[float], count: int) -> tuple[int, int]:
    k_min, k_max = round(-math.log2(spatial_scales[0])), round(-math.log2(spatial_scales[-1]))
    if k_max - k_min + 1 != count:
        raise ValueError(
            f"roi_features: spatial_scales={list(spatial_scales)} are not {count} consecutive powers of 1/2"
        )
    return k_min, k_max


def pool_rois(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    *,
    method: str = "roi_align",
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> torch.Tensor:
    """roi_features on rois (K, 5) = (batch index, x1, y1, x2, y2), in their order."""
    if method not in METHODS:
        raise ValueError(f"roi_features: method={method!r}, expected one of {METHODS}")
    if len(features) != len(spatial_scales) or not features:
        raise ValueError(
            f"roi_features: {len(features)} feature maps and {len(spatial_scales)} spatial_scales, "
            "expected one scale per map and at least one map"
        )
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    first = features[0]
    if len(features) == 1:
        return _pool(first, rois, method, size, spatial_scales[0], sampling_ratio, aligned)
    k_min, k_max = _levels(spatial_scales, len(features))
    levels = map_levels(rois[:, 1:], k_min, k_max, canonical_scale, canonical_level) - k_min
    result = first.new_zeros((len(rois), first.shape[1], *size))
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.where(levels == level)[0]
        result[idx] = _pool(feature, rois[idx], method, size, scale, sampling_ratio, aligned).to(result.dtype)
    return result


class RoIPooler(nn.Module):
    """pool_rois as a module, without weights: (features, rois (K, 5)) -> (K, C, h, w)."""

    def __init__(self, method: str, output_size: int, spatial_scales: Sequence[float], sampling_ratio: int = 2,
                 aligned: bool = False) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"RoIPooler: method={method!r}, expected one of {METHODS}")
        self.method, self.output_size, self.spatial_scales = method, output_size, list(spatial_scales)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        return pool_rois(features, rois, method=self.method, output_size=self.output_size,
                         spatial_scales=self.spatial_scales, sampling_ratio=self.sampling_ratio, aligned=self.aligned)

    def in_graph(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """forward's RoIAlign as an exported graph computes it: `on_atlas` of the RoIs placed by `atlas_rois`."""
        placed = self.atlas_rois(features, rois)
        return self.on_atlas(features, placed[:, 1:], placed[:, 0])

    def atlas_rois(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The RoIs (K, 5) moved onto the levels' atlas of `features` (module doc); with one level, as they are.
        Computed outside the exported graph, in float32, so that the graph holds no coordinate arithmetic: under
        OpenVINO's bf16 hint every op of a graph other than its convolutions and matrix products may run in bf16
        (8 significant bits), which rounds coordinates of hundreds of pixels to a step of 1-2 pixels."""
        if self.method != "roi_align":
            raise ValueError(f"RoIPooler.in_graph: only roi_align goes in a graph, not {self.method}")
        rois = rois.to(torch.promote_types(features[0].dtype, torch.float32))  # float64 in the tests
        if len(features) == 1:
            return rois
        k_min, k_max = _levels(self.spatial_scales, len(features))
        levels = map_levels(rois[:, 1:], k_min, k_max) - k_min
        # Coordinates on their level, moved right by the widths of the levels before it (each with its border).
        scale, shift = torch.zeros_like(rois[:, 0]), torch.ones_like(rois[:, 0])
        for level, (f, s) in enumerate(zip(features, self.spatial_scales)):
            scale = scale + (levels == level).to(rois.dtype) * s
            shift = shift + (levels > level).to(rois.dtype) * (f.shape[-1] + 2)
        xy = rois[:, 1:] * scale[:, None] + torch.stack([shift, torch.ones_like(shift)] * 2, dim=1)
        return torch.cat([rois[:, :1], xy], dim=1)

    def on_atlas(self, features: Sequence[torch.Tensor], boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """RoIAlign of RoIs placed by `atlas_rois`, given as their boxes (K, 4) and batch indices (K,) apart: one
        roi_align over the atlas (an exported graph's ONNX RoiAlign / OpenVINO ROIAlign, fed by the graph's inputs
        with no op between them, see roi_align_boxes)."""
        if self.method != "roi_align":
            raise ValueError(f"RoIPooler.in_graph: only roi_align goes in a graph, not {self.method}")
        h, w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else tuple(self.output_size)
        dtype = torch.promote_types(features[0].dtype, torch.float32)  # float32 in a graph (float64 in the tests)
        boxes, index, features = boxes.to(dtype), index.to(dtype), [f.to(dtype) for f in features]
        if len(features) == 1:
            return roi_align_boxes(features[0], boxes, index, h, w, self.spatial_scales[0], self.sampling_ratio,
                                   self.aligned)
        # Each level padded by one replicated pixel on every side, then to the tallest level's height, side by side.
        padded = [F.pad(f, (1, 1, 1, 1), mode="replicate") for f in features]
        height = padded[0].shape[-2]
        atlas = torch.cat([F.pad(p, (0, 0, 0, height - p.shape[-2])) for p in padded], dim=-1)
        return roi_align_boxes(atlas, boxes, index, h, w, 1.0, self.sampling_ratio, self.aligned)


@torch.library.custom_op("pixelwise::roi_align_boxes", mutates_args=())
def roi_align_boxes(input: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, height: int, width: int,
                    spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """torchvision.ops.roi_align with the RoIs' boxes (K, 4) and batch indices (K,) as floats, apart. An op of its own
    so that export writes it as one ONNX RoiAlign of the graph's inputs (pixelwise.export.onnx_translations):
    torchvision's own export slices the boxes out of the (K, 5) RoIs, and OpenVINO's bf16 hint runs that slice in
    bf16, which rounds coordinates of a few hundred pixels to a step of 1-2 pixels (0.5 mask AP points on ISBI)."""
    rois = torch.cat([index[:, None].to(boxes.dtype), boxes], dim=1)
    return torchvision.ops.roi_align(input, rois, (height, width), spatial_scale, sampling_ratio, aligned)


@roi_align_boxes.register_fake
def _(input, boxes, index, height, width, spatial_scale, sampling_ratio, aligned):
    return input.new_empty((boxes.shape[0], input.shape[1], height, width))
