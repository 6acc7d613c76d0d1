"""Mask R-CNN mask targets (RoIAlign of the ground truth onto proposals) and pasting M x M mask
predictions back into the image (Mask R-CNN section 3, "Mask Representation"; section 3.1,
"Inference": the m x m mask is resized to the RoI size and binarised at 0.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["mask_targets", "paste_masks"]


def mask_targets(
    gt_masks: torch.Tensor,
    matched_idxs: torch.Tensor,
    proposals: torch.Tensor,
    size: int = 28,
    sampling_ratio: int = 0,
) -> torch.Tensor:
    """(N, size, size) float targets in [0, 1]: gt_masks[matched_idxs[i]] cropped to proposals[i].

    gt_masks: (G, H, W) bool / uint8 / float; matched_idxs: (N,) in [0, G); proposals: (N, 4) in
    image pixels. One RoIAlign call over all proposals, the batch index of each RoI being its
    ground-truth mask. Same settings as torchvision's `project_masks_on_boxes` (aligned=False,
    adaptive sampling), so the targets equal torchvision's; only the masks that are matched are
    converted to float.
    """
    if len(matched_idxs) == 0:
        return proposals.new_zeros((0, size, size))
    used, inverse = torch.unique(matched_idxs, return_inverse=True)
    masks = gt_masks[used][:, None].to(proposals.dtype)
    rois = torch.cat([inverse[:, None].to(proposals.dtype), proposals], dim=1)
    return roi_align(masks, rois, (size, size), 1.0, sampling_ratio, aligned=False)[:, 0]


def _pasted_boxes(boxes: torch.Tensor, m: int) -> torch.Tensor:
    """Integer (N, 4) boxes of the padded (m + 2) masks: each box scaled by (m + 2) / m about its
    centre and truncated to int64, as torchvision's `expand_boxes(...).to(torch.int64)`."""
    scale = float(m + 2) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], dim=1).to(torch.int64)


_FLOAT32_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, tiny: bool = True) -> torch.Tensor:
    """a * b + c rounded once, as the fused multiply-adds of ATen's compiled CPU kernels.

    float32: the exact float64 product plus c, rounded to float32. Rounding twice (to float64, then
    float32) can differ from rounding once only where the float64 sum is a float32 tie, or is
    float32-subnormal (not checked when `tiny` is False); there the TwoSum error of the float64 sum
    rounds it to odd first, which makes the second rounding exact. Other dtypes: a * b + c.
    """
    if c.dtype != torch.float32:
        return a * b + c
    total = torch.mul(a, b.double())  # exact: 24-bit significands
    total += c
    out = total.float()
    # A float32 tie has float64 significand bits 28..0 = 1 followed by 28 zeros: shifted to the top,
    # the smallest int64. (Shifted in place; total is recomputed where needed.)
    shifted = total.view(torch.int64).bitwise_left_shift_(35)
    lowest = torch.iinfo(torch.int64).min
    suspect = shifted == lowest if int(shifted.min()) == lowest else None
    if tiny:
        subnormal = (out.abs() <= _FLOAT32_TINY) & (torch.mul(a, b.double()) + c != 0)
        suspect = subnormal if suspect is None else suspect | subnormal
    if suspect is not None and bool(suspect.any()):
        at = suspect.nonzero(as_tuple=True)
        p = a.double().expand_as(out)[at] * b.double().expand_as(out)[at]
        q = c.double().expand_as(out)[at]
        s = p + q
        error = (p - (s - (s - p))) + (q - (s - p))  # TwoSum: p + q == s + error exactly
        bits = s.view(torch.int64)
        toward = torch.where((error > 0) == (s > 0), 1, -1)  # next float64 towards p + q
        bits = torch.where((error != 0) & (bits % 2 == 0), bits + toward, bits)
        out[at] = bits.view(torch.float64).float()
    return out


def _axis(start: torch.Tensor, end: torch.Tensor, length: int, size_in: int, dtype: torch.dtype):
    """ATen's linear-interpolation indices and weights (align_corners=False) of k signals of size_in
    samples resized onto pixels start..end (inclusive) of an axis of `length` pixels.

    Returns the (k, S) pixels of a common window (S distinct in-image pixels per signal, S the longest
    in-image extent) and, for each, index0, index1, lambda0, lambda1 of `compute_source_index_and_lambda`
    (aten/src/ATen/native/UpSample.h): scale = in / out in float32, src = scale * (dst + 0.5) - 0.5
    (an FMA in the compiled kernel) clamped at 0, index0 = floor(src), lambda1 = src - index0,
    lambda0 = 1 - lambda1, index1 = index0 + 1 except at the last sample; a copy when out == in.
    Both weights are 0 on pixels outside start..end, which interpolate to exactly 0.
    """
    first, last = start.clamp(0, length), end.clamp(-1, length - 1)
    size = int((last - first + 1).max().clamp(min=1))
    pixels = first.clamp(max=length - size)[:, None] + torch.arange(size, device=start.device)
    inside = (pixels >= start[:, None]) & (pixels <= end[:, None])
    out_size = (end - start + 1).clamp(min=1)[:, None]
    dst = torch.minimum((pixels - start[:, None]).clamp(min=0), out_size - 1)
    scale = torch.full_like(out_size, size_in, dtype=dtype) / out_size.to(dtype)
    src = _fma(scale, dst.to(dtype) + 0.5, torch.full((), -0.5, dtype=dtype), tiny=False).clamp(min=0)
    index0 = src.floor().long().clamp(max=size_in - 1)
    lambda1 = (src - index0.to(dtype)).clamp(0, 1)
    copy = out_size == size_in
    index0 = torch.where(copy, dst, index0)
    index1 = torch.where(copy, dst, index0 + (index0 < size_in - 1).long())
    lambda1 = torch.where(copy, 0.0, lambda1)
    lambda0 = torch.where(inside, 1 - lambda1, 0.0)
    return pixels, index0, index1, lambda0, torch.where(inside, lambda1, 0.0)


def paste_masks(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    chunk: int = 8,
) -> torch.Tensor:
    """(N, H, W) masks in the image: bool `prob >= threshold`, or probabilities when threshold is None.

    masks: (N, M, M) probabilities; boxes: (N, 4) detections in image pixels; image_size (H, W).
    Torchvision's `paste_masks_in_image` (padding=1) without its loop over detections, with the same
    values (bit for bit on CPU in float32): the mask is zero-padded to M + 2, its box enlarged by
    (M + 2) / M and truncated to integers (x1, y1, x2, y2), and the padded mask resized bilinearly
    (align_corners=False) to h x w = (y2 - y1 + 1, x2 - x1 + 1) pixels placed at (x1, y1), with the
    arithmetic of the ATen CPU kernel that F.interpolate uses for that size (as compiled, with FMAs,
    for x86-64 AVX2 / AVX512). `chunk` detections of similar size at a time, in a window as large as
    their largest box, written into the image.
    """
    n, m = masks.shape[0], masks.shape[-1]
    height, width = image_size
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    out = torch.zeros((n, height, width), dtype=torch.bool if threshold is not None else dtype, device=masks.device)
    if n == 0:
        return out
    padded = F.pad(masks.to(dtype), (1, 1, 1, 1))
    x1, y1, x2, y2 = _pasted_boxes(boxes, m).unbind(dim=1)
    box_h, box_w = (y2 - y1 + 1).clamp(min=1), (x2 - x1 + 1).clamp(min=1)
    # ATen's _use_channels_last_kernel_2d (UpSampleKernel.cpp): for h + w <= 128 F.interpolate
    # runs upsample_linear_channels_last, otherwise the generic kernel; they round differently.
    small = box_h + box_w <= 128
    rows = (y2.clamp(max=height - 1) - y1.clamp(min=0) + 1).clamp(min=0)
    order = torch.argsort(small * (height + 1) + rows)  # by kernel, then by in-image height
    # _fma's subnormal check is needed only if some sum can be nonzero and below 2 ** -126. Not
    # for non-negative masks whose nonzero values are >= 2 ** -40 and boxes up to 2 ** 16 pixels:
    # then nonzero weights are >= 2 ** -40 (lambda1 is a multiple of 2 ** (e - 24) or of
    # 2 ** -23, e >= -15 the exponent of the float32 scale (M + 2) / out).
    positive = padded[padded > 0]
    tiny = bool(padded.min() < 0) or bool(torch.maximum(box_h, box_w).max() > 2 ** 16) or (
        positive.numel() > 0 and bool(positive.min() < 2.0 ** -40))
    for kernel in (_bilinear_generic, _bilinear_channels_last):
        group = order[small[order] == (kernel is _bilinear_channels_last)]
        for i in range(0, len(group), chunk):
            idx = group[i:i + chunk]
            ys, *y_weights = _axis(y1[idx], y2[idx], height, m + 2, dtype)
            xs, *x_weights = _axis(x1[idx], x2[idx], width, m + 2, dtype)
            pasted = kernel(padded[idx], *y_weights, *x_weights, tiny=tiny)
            if threshold is not None:
                pasted = pasted >= threshold
            at = (idx[:, None] * height + ys) * width  # (k, S_y) row starts in out
            out.view(-1).put_(at[:, :, None] + xs[:, None, :], pasted)
    return out


def _bilinear_generic(mask, yi0, yi1, h0, h1, xi0, xi1, w0, w1, tiny=True) -> torch.Tensor:
    """(k, S_y, S_x) values of ATen's generic kernel (InterpolateNonSeparable, 2 samples per axis):
    t0 * lambda0 + t1 * lambda1 along W, then along H, each compiled as fma(t0, lambda0, t1 * lambda1)."""
    k, p = mask.shape[:2]
    base = torch.arange(k, device=mask.device)[:, None] * p
    mask_t = mask.transpose(1, 2).reshape(k * p, p)  # columns of the masks as rows
    a = mask_t.index_select(0, (base + xi0).flatten()).view(k, -1, p).transpose(1, 2)
    b = mask_t.index_select(0, (base + xi1).flatten()).view(k, -1, p).transpose(1, 2)
    cols = _fma(a, w0[:, None, :], b * w1[:, None, :], tiny).reshape(k * p, -1)  # (k * (M + 2), S_x)
    t0 = cols.index_select(0, (base + yi0).flatten()).view(k, yi0.shape[1], -1)
    t1 = cols.index_select(0, (base + yi1).flatten()).view(k, yi0.shape[1], -1)
    return _fma(t0, h0[:, :, None], t1.mul_(h1[:, :, None]), tiny)


def _bilinear_channels_last(mask, yi0, yi1, h0, h1, xi0, xi1, w0, w1, tiny=True) -> torch.Tensor:
    """(k, S_y, S_x) values of ATen's upsample_linear_channels_last for one channel:
    i00 * w00 + i01 * w01 + i10 * w10 + i11 * w11 with w00 = h0 * w0 etc., which the compiled kernel
    evaluates as i01 * w01, then FMAs with i00 * w00, i10 * w10 and i11 * w11."""
    k = torch.arange(mask.shape[0], device=mask.device)[:, None, None]
    r0, r1, c0, c1 = yi0[:, :, None], yi1[:, :, None], xi0[:, None, :], xi1[:, None, :]
    h0, h1, w0, w1 = h0[:, :, None], h1[:, :, None], w0[:, None, :], w1[:, None, :]
    out = mask[k, r0, c1] * (h0 * w1)
    out = _fma(mask[k, r0, c0], h0 * w0, out, tiny)
    out = _fma(mask[k, r1, c0], h1 * w0, out, tiny)
    return _fma(mask[k, r1, c1], h1 * w1, out, tiny)
