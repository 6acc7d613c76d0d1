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


def _window(
    start: torch.Tensor, end: torch.Tensor, length: int, m: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resizing (align_corners=False, edge-clamped, as F.interpolate) of k m-sample signals
    onto pixels start..end (inclusive) of an axis of `length` pixels, within a common window.

    Returns weights (k, S, m), zero outside start..end, and the window's pixels (k, S): S distinct
    in-image pixels per signal, S the longest in-image extent, covering each one's extent.
    """
    first, last = start.clamp(0, length), end.clamp(-1, length - 1)
    size = int((last - first + 1).max().clamp(min=1))
    pixels = first.clamp(max=length - size)[:, None] + torch.arange(size, device=start.device)
    out = (end - start + 1).clamp(min=1)[:, None].to(dtype)
    src = (((pixels - start[:, None]).to(dtype) + 0.5) * (m / out) - 0.5).clamp(min=0, max=m - 1)
    weights = (1 - (src[..., None] - torch.arange(m, device=start.device, dtype=dtype)).abs()).clamp(min=0)
    inside = (pixels >= start[:, None]) & (pixels <= end[:, None])
    return weights * inside[..., None], pixels


def paste_masks(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    chunk: int = 8,
) -> torch.Tensor:
    """(N, H, W) masks in the image: bool `prob >= threshold`, or probabilities when threshold is None.

    masks: (N, M, M) probabilities; boxes: (N, 4) detections in image pixels; image_size (H, W).
    Follows torchvision's `paste_masks_in_image` (padding=1), to float rounding: the mask is
    zero-padded to M + 2, its box enlarged by (M + 2) / M and truncated to integers (x1, y1, x2, y2),
    and the padded mask resized bilinearly (align_corners=False) to (y2 - y1 + 1, x2 - x1 + 1)
    pixels placed at (x1, y1). Bilinear resizing is separable: each mask becomes R_y @ mask @ R_x^T,
    computed for `chunk` detections at a time by batched matrix products over windows as large as
    their largest box, then scattered into the image; no loop over single detections.
    """
    n, m = masks.shape[0], masks.shape[-1]
    height, width = image_size
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    out = torch.zeros((n, height, width), dtype=torch.bool if threshold is not None else dtype, device=masks.device)
    padded = F.pad(masks.to(dtype), (1, 1, 1, 1))
    x1, y1, x2, y2 = _pasted_boxes(boxes, m).unbind(dim=1)
    for i in range(0, n, chunk):
        s = slice(i, i + chunk)
        rows, ys = _window(y1[s], y2[s], height, m + 2, dtype)
        cols, xs = _window(x1[s], x2[s], width, m + 2, dtype)
        pasted = torch.bmm(torch.bmm(rows, padded[s]), cols.transpose(1, 2))
        if threshold is not None:
            pasted = pasted >= threshold
        index = torch.arange(len(ys), device=masks.device)[:, None, None]
        out[s][index, ys[:, :, None], xs[:, None, :]] = pasted
    return out
