"""RoIAlign (Mask R-CNN section 3) as one weighted gather: multi-threaded, any dtype, any device.

Every output bin of RoIAlign is a weighted sum of feature vectors: each of its sampling_ratio^2
sample points is a bilinear blend of 4 neighbouring pixels, and the bin averages its samples. So the
bin is a "bag" of 4 * samples rows of the (B*H*W, C) table of feature vectors (the channels-last view
of the feature map), each with its weight, and `torch.nn.functional.embedding_bag(mode="sum")` computes
all bins at once: multi-threaded on the CPU, in bf16 as well as float32, and differentiable in the
features. torchvision's CPU `roi_align` is one thread and float32 only (bf16 maps are converted first).

The sample points and weights follow torchvision's kernel (roi_align_kernel.cpp) operation for
operation: box start and size with the half-pixel offset when `aligned`, sizes at least 1 otherwise,
ceil(roi_size / output_size) samples per bin when sampling_ratio <= 0, samples outside [-1, size]
contribute 0, samples in [-1, 0] clamp to 0, and the last row / column is not interpolated past.
Results agree with torchvision's in float32 to rounding (the sums are taken in another order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["roi_align"]

MAX_ENTRIES = 1 << 22  # (bin, sample, corner) entries per chunk: the index and weight tensors stay ~50 MB


def _axis(start, size, bins: int, grid, grid_max: int, length: int):
    """Per RoI, bin and sample along one axis: (low, high) pixel indices, (1 - frac, frac) weights, valid.

    start, size: (K,) box start and size in feature pixels; grid: (K,) samples per bin. Shapes (K, bins, G, 2).
    """
    b = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    s = torch.arange(grid_max, device=start.device, dtype=start.dtype)[None, None, :]
    bin_size = (size / bins)[:, None, None]
    g = grid.to(start.dtype)[:, None, None]
    # torchvision: roi_start + p * bin_size + (i + .5) * bin_size / grid, evaluated left to right.
    y = start[:, None, None] + b * bin_size + (s + 0.5) * bin_size / g
    valid = ~((y < -1.0) | (y > length)) & (s < g)
    y = y.clamp(min=0)
    low = y.to(torch.int64)
    edge = low >= length - 1
    low = torch.where(edge, torch.full_like(low, length - 1), low)
    high = torch.where(edge, low, low + 1)
    y = torch.where(edge, low.to(y.dtype), y)
    frac = y - low.to(y.dtype)
    return torch.stack([low, high], -1), torch.stack([1.0 - frac, frac], -1), valid


def roi_align(input: torch.Tensor, rois: torch.Tensor, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """torchvision.ops.roi_align's signature and values for a (B, C, H, W) map and (K, 5) rois
    (batch index, x1, y1, x2, y2); the result is (K, C, h, w) in the map's dtype, channels-last in memory.

    Coordinates and weights are computed in the rois' dtype (keep them float32 with a bf16 map: bf16
    coordinates near 500 px are 2 px apart); the gather runs in the map's dtype.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if input.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: input (B, C, H, W) and rois (K, 5) expected, got {tuple(input.shape)} "
                         f"and {tuple(rois.shape)}")
    n, c, height, width = input.shape
    k = rois.shape[0]
    if k == 0 or input.numel() == 0:
        return input.new_zeros((k, c, ph, pw)).contiguous(memory_format=torch.channels_last)
    table = input.permute(0, 2, 3, 1).contiguous().view(n * height * width, c)  # no copy for a channels-last map
    rois = rois.detach()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    w, h = x2 - x1, y2 - y1
    if not aligned:  # torchvision's legacy rule: boxes at least one pixel
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = gx = torch.full((k,), sampling_ratio, dtype=torch.int64, device=rois.device)
    else:
        gy, gx = torch.ceil(h / ph).to(torch.int64), torch.ceil(w / pw).to(torch.int64)
    gy_max, gx_max = max(int(gy.max()), 1), max(int(gx.max()), 1)
    count = (gy * gx).clamp(min=1).to(rois.dtype)
    base = rois[:, 0].to(torch.int64) * (height * width)
    per_roi = ph * pw * gy_max * gx_max * 4
    out = []
    for lo in range(0, k, max(1, MAX_ENTRIES // per_roi)):
        sl = slice(lo, lo + max(1, MAX_ENTRIES // per_roi))
        ry, wy, vy = _axis(y1[sl], h[sl], ph, gy[sl], gy_max, height)
        rx, wx, vx = _axis(x1[sl], w[sl], pw, gx[sl], gx_max, width)
        # (K, ph, pw, Gy, Gx, 2, 2): bin (p, q), sample (i, j), corner (row low/high, column low/high)
        index = (base[sl, None, None, None, None, None, None] + ry[:, :, None, :, None, :, None] * width
                 + rx[:, None, :, None, :, None, :])
        valid = vy[:, :, None, :, None, None, None] & vx[:, None, :, None, :, None, None]
        weight = (wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
                  / count[sl, None, None, None, None, None, None]) * valid
        bags = index.shape[0] * ph * pw
        index, weight = index.reshape(bags, -1), weight.reshape(bags, -1).to(input.dtype)
        if sampling_ratio <= 0:  # bags of different sizes: drop the padding samples, mark where each bag starts
            keep = valid.expand(-1, -1, -1, -1, -1, 2, 2).reshape(bags, -1)
            offsets = torch.cumsum(keep.sum(1), 0) - keep.sum(1)
            out.append(F.embedding_bag(index[keep], table, offsets, mode="sum", per_sample_weights=weight[keep]))
        else:
            out.append(F.embedding_bag(index, table, mode="sum", per_sample_weights=weight))
    return torch.cat(out).view(k, ph, pw, c).permute(0, 3, 1, 2)
