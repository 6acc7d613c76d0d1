"""Box coding, clipping, proposal-to-ground-truth matching and balanced sampling (Faster R-CNN).

Boxes are (x1, y1, x2, y2) in image pixels. Widths are x2 - x1 and centres x1 + 0.5 * w, as in
torchvision (no "+1" of the original Detectron), so a model converted from torchvision's
`maskrcnn_resnet50_fpn` decodes to the same boxes. The arithmetic below is written in the same
order as torchvision's `BoxCoder`, which keeps the results bitwise equal.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "BBOX_CLAMP", "BETWEEN_THRESHOLDS", "BELOW_LOW_THRESHOLD", "BOX_HEAD_WEIGHTS", "RPN_WEIGHTS",
    "box_iou", "clip_boxes", "decode", "encode", "match", "remove_small", "sample_balanced",
]

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_CLAMP = math.log(1000.0 / 16)  # largest dw, dh fed to exp(): a box grows at most 62.5x
BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def _centres(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode(boxes: torch.Tensor, proposals: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(N, 4) regression targets that move proposals (N, 4) onto boxes (N, 4).

    Faster R-CNN eq. 2 (R-CNN appendix C), scaled by weights (wx, wy, ww, wh):
    t = (wx (x - xa) / wa, wy (y - ya) / ha, ww log(w / wa), wh log(h / ha)).
    Matches torchvision's `BoxCoder.encode_single(boxes, proposals)`; use `RPN_WEIGHTS` for
    anchors and `BOX_HEAD_WEIGHTS` for the second stage, as torchvision does.
    """
    wx, wy, ww, wh = weights
    ex_x, ex_y, ex_w, ex_h = _centres(proposals)
    gt_x, gt_y, gt_w, gt_h = _centres(boxes)
    return torch.stack((
        wx * (gt_x - ex_x) / ex_w,
        wy * (gt_y - ex_y) / ex_h,
        ww * torch.log(gt_w / ex_w),
        wh * torch.log(gt_h / ex_h),
    ), dim=-1)


def decode(
    deltas: torch.Tensor, proposals: torch.Tensor, weights: Sequence[float], clamp: float = BBOX_CLAMP
) -> torch.Tensor:
    """Boxes (N, 4K) from deltas (N, 4K) (K = 1, or one box per class) applied to proposals (N, 4).

    Inverse of `encode`; dw and dh are clamped at `clamp` (log(1000/16), torchvision's
    `bbox_xform_clip`) before exp(). Matches torchvision's `BoxCoder.decode_single`.
    """
    wx, wy, ww, wh = weights
    n = deltas.shape[0]
    d = deltas.reshape(n, deltas.shape[1] // 4, 4)
    ctr_x, ctr_y, widths, heights = _centres(proposals.to(deltas.dtype)[:, None, :])
    dw = torch.clamp(d[..., 2] / ww, max=clamp)
    dh = torch.clamp(d[..., 3] / wh, max=clamp)
    pred_x = d[..., 0] / wx * widths + ctr_x
    pred_y = d[..., 1] / wy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    boxes = torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=-1)
    return boxes.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes (..., 4) clamped to an image of (height, width): x in [0, width], y in [0, height].

    Same as torchvision's `clip_boxes_to_image`.
    """
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """(K,) int64 indices of the boxes (N, 4) whose width and height are both >= min_size.

    Same rule as torchvision's `remove_small_boxes` (which keeps sides equal to min_size).
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, block: int = 2 ** 18) -> torch.Tensor:
    """(N, M) IoU of boxes1 (N, 4) with boxes2 (M, 4): torchvision's `box_iou`, value for value, computed
    a few rows at a time (about `block` elements) so that its intermediates stay in the CPU's cache.
    For the RPN's 136 ground-truth boxes x 65k anchors of an ISBI slice that is 3-3.5x faster.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    out = torch.empty((len(boxes1), len(boxes2)), dtype=area2.dtype, device=boxes2.device)
    x1, y1, x2, y2 = boxes2.unbind(dim=1)
    rows = max(1, block // max(len(boxes2), 1))
    for i in range(0, len(boxes1), rows):
        a = boxes1[i:i + rows, :, None]
        w = torch.minimum(a[:, 2], x2).sub_(torch.maximum(a[:, 0], x1)).clamp_(min=0)
        h = torch.minimum(a[:, 3], y2).sub_(torch.maximum(a[:, 1], y1)).clamp_(min=0)
        inter = w.mul_(h)
        torch.div(inter, (area1[i:i + rows, None] + area2).sub_(inter), out=out[i:i + rows])
    return out


def match(
    iou_matrix: torch.Tensor, high: float, low: float, allow_low_quality_matches: bool = False
) -> torch.Tensor:
    """(N,) int64: for each of N predictions, the index of its ground truth in iou_matrix (G, N).

    A prediction whose best IoU is >= high keeps that ground truth; below `low` it gets
    `BELOW_LOW_THRESHOLD` (-1, negative) and in [low, high) `BETWEEN_THRESHOLDS` (-2, ignored).
    With `allow_low_quality_matches` (Faster R-CNN section 3.1.2, condition (i) for the RPN), the
    predictions with the highest IoU for each ground truth, ties included, get their best ground
    truth back even when it is below `high`. Same result as torchvision's `Matcher`, including
    which ground truth wins a tie (the first, from `max(dim=0)`); unlike it, no ground truth
    (G = 0) makes every prediction negative instead of raising.
    """
    if low > high:
        raise ValueError(f"match: low={low} > high={high}, expected low <= high")
    num_gt, num_pred = iou_matrix.shape
    if num_gt == 0 or num_pred == 0:
        return torch.full((num_pred,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou_matrix.device)
    best_iou, best_gt = iou_matrix.max(dim=0)
    matches = best_gt.clone()
    matches[best_iou < low] = BELOW_LOW_THRESHOLD
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        best_for_gt = iou_matrix.max(dim=1).values
        preds = torch.where(iou_matrix == best_for_gt[:, None])[1]
        matches[preds] = best_gt[preds]
    return matches


def sample_balanced(
    labels: torch.Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_mask, neg_mask), both (N,) bool, a random mini-batch of the labels (N,) of one image.

    labels: >= 1 positive, 0 negative, -1 ignored. Up to int(batch_size_per_image *
    positive_fraction) positives are drawn at random, negatives fill the rest of the batch
    (Faster R-CNN section 3.1.3: 256 anchors, up to 1:1; Fast R-CNN section 2.3: 25% foreground).
    Draws `randperm(#positives)` then `randperm(#negatives)` like torchvision's
    `BalancedPositiveNegativeSampler`, so with the same global seed both pick the same samples.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    device = generator.device if generator is not None else labels.device
    pos = positive[torch.randperm(positive.numel(), generator=generator, device=device)[:num_pos].to(labels.device)]
    neg = negative[torch.randperm(negative.numel(), generator=generator, device=device)[:num_neg].to(labels.device)]
    pos_mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    neg_mask = torch.zeros_like(pos_mask)
    pos_mask[pos] = True
    neg_mask[neg] = True
    return pos_mask, neg_mask
