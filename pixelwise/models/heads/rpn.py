"""Region Proposal Network (Faster R-CNN section 3.1; on a pyramid, FPN section 4.1).

`RPNHead` is the module; `flatten_predictions`, `generate_proposals` and `rpn_loss` are pure
functions beside it. Orders and arithmetic follow torchvision's `RegionProposalNetwork`, so weights
converted from torchvision give the same proposals.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms

from pixelwise.ops.anchors import grid_anchors
from pixelwise.ops.boxes import (
    BELOW_LOW_THRESHOLD, RPN_WEIGHTS, box_iou, clip_boxes, decode, encode, match, remove_small, sample_balanced,
)

__all__ = ["RPN", "RPNHead", "crowd_overlap", "flatten_predictions", "generate_proposals", "rpn_loss"]


class RPNHead(nn.Module):
    """[P_l (B, C, H_l, W_l)] -> (objectness [(B, A, H_l, W_l)], deltas [(B, 4A, H_l, W_l)]).

    One head shared by every level (FPN section 4.1): 3x3 conv + ReLU, then sibling 1x1 convs for A
    objectness logits and 4A box deltas per location (Faster R-CNN section 3.1).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for m in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)  # Faster R-CNN section 3.1.3
            nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        objectness, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x), inplace=True)
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas


def flatten_predictions(
    objectness: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) logits and (B, N, 4) deltas, N = sum_l H_l W_l A, rows ordered level, location, anchor
    (the order of `ops.anchors.grid_anchors`)."""
    flat_obj, flat_deltas = [], []
    for obj, d in zip(objectness, deltas):
        b, a, h, w = obj.shape
        flat_obj.append(obj.permute(0, 2, 3, 1).reshape(b, -1))
        flat_deltas.append(d.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
    return torch.cat(flat_obj, dim=1), torch.cat(flat_deltas, dim=1)


def generate_proposals(
    objectness: torch.Tensor,
    deltas: torch.Tensor,
    anchors: torch.Tensor,
    num_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float = 0.7,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image, (P_i, 4) proposals and (P_i,) objectness probabilities, best first.

    objectness (B, N), deltas (B, N, 4), anchors (N, 4) shared by the batch; num_per_level: N split
    by level; image_sizes: (H, W) of each unpadded image. Per level the top pre_nms_top_n logits are
    kept (FPN section 4.1), decoded with weights (1, 1, 1, 1), clipped, boxes under min_size and
    scores under score_thresh dropped, NMS at nms_thresh within each level (torchvision's batched_nms
    over levels), and the top post_nms_top_n of the image kept. No gradient flows into proposals.
    """
    objectness, deltas = objectness.detach(), deltas.detach()
    num_images = objectness.shape[0]
    device = objectness.device
    top_idx, levels, offset = [], [], 0
    for level, ob in enumerate(objectness.split(list(num_per_level), dim=1)):
        k = min(pre_nms_top_n, ob.shape[1])
        top_idx.append(ob.topk(k, dim=1).indices + offset)
        levels.append(torch.full((k,), level, dtype=torch.int64, device=device))
        offset += ob.shape[1]
    top_idx = torch.cat(top_idx, dim=1)
    levels = torch.cat(levels)
    batch = torch.arange(num_images, device=device)[:, None]
    probs = torch.sigmoid(objectness[batch, top_idx])
    # Decode every anchor of the batch in one call, as torchvision: the same array layout gives the
    # same exp() rounding, hence bitwise the same proposals.
    boxes = decode(deltas.reshape(-1, 4), anchors.repeat(num_images, 1), RPN_WEIGHTS).view(num_images, -1, 4)
    boxes = boxes[batch, top_idx]
    all_boxes, all_scores = [], []
    for b, s, size in zip(boxes, probs, image_sizes):
        b = clip_boxes(b, size)
        keep = remove_small(b, min_size)
        b, s, lvl = b[keep], s[keep], levels[keep]
        keep = torch.where(s >= score_thresh)[0]
        b, s, lvl = b[keep], s[keep], lvl[keep]
        keep = batched_nms(b, s, lvl, nms_thresh)[:post_nms_top_n]
        all_boxes.append(b[keep])
        all_scores.append(s[keep])
    return all_boxes, all_scores


def crowd_overlap(crowd_boxes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N,) largest fraction of each box (N, 4) covered by any crowd box (G, 4); 0 without crowds."""
    if crowd_boxes.numel() == 0 or boxes.numel() == 0:
        return boxes.new_zeros(boxes.shape[0])
    lt = torch.max(crowd_boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(crowd_boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (inter / area.clamp(min=1e-6)).max(dim=0).values


def rpn_loss(
    objectness: torch.Tensor,
    deltas: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    crowd_boxes: Sequence[torch.Tensor] | None = None,
    *,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    crowd_thresh: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_objectness, loss_rpn_box_reg), scalars.

    objectness (B, N) logits, deltas (B, N, 4), anchors (N, 4); gt_boxes: B tensors (G_i, 4) of
    non-crowd objects; crowd_boxes: B tensors (C_i, 4). Faster R-CNN section 3.1.2: anchors with
    IoU >= 0.7 (and each ground truth's best anchors) are positive, < 0.3 negative; 256 anchors per
    image at up to 1:1 (section 3.1.3); negatives covered >= crowd_thresh by a crowd region are
    ignored (Detectron's crowd filter). Binary cross-entropy over the sampled anchors, smooth L1
    (beta 1/9) on positives summed and divided by the number sampled, as torchvision.
    """
    labels, targets = [], []
    for i, gt in enumerate(gt_boxes):
        gt = gt.to(anchors.dtype)
        matched = match(box_iou(gt, anchors), fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        lab = (matched >= 0).to(anchors.dtype)
        lab[matched < 0] = -1.0
        lab[matched == BELOW_LOW_THRESHOLD] = 0.0
        if crowd_boxes is not None and crowd_boxes[i].numel():
            lab[(lab == 0) & (crowd_overlap(crowd_boxes[i].to(anchors.dtype), anchors) >= crowd_thresh)] = -1.0
        labels.append(lab)
        if gt.numel():
            targets.append(encode(gt[matched.clamp(min=0)], anchors, RPN_WEIGHTS))
        else:
            targets.append(torch.zeros_like(anchors))
    sampled_pos, sampled_neg = [], []
    for lab in labels:
        pos, neg = sample_balanced(lab, batch_size_per_image, positive_fraction)
        sampled_pos.append(pos)
        sampled_neg.append(neg)
    pos = torch.where(torch.cat(sampled_pos))[0]
    neg = torch.where(torch.cat(sampled_neg))[0]
    sampled = torch.cat([pos, neg])
    labels_flat = torch.cat(labels)
    box_loss = F.smooth_l1_loss(
        deltas.reshape(-1, 4)[pos], torch.cat(targets)[pos], beta=1 / 9, reduction="sum"
    ) / max(sampled.numel(), 1)
    obj_loss = F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled], labels_flat[sampled])
    return obj_loss, box_loss


class RPN(nn.Module):
    """Region proposals and their losses from a list of feature maps (finest first).

    forward(features, image_sizes, padded_size, gt_boxes, crowd_boxes) -> (proposals, losses):
    features (B, C, H_l, W_l); image_sizes: (H, W) of each resized unpadded image; padded_size: the
    batch's (H, W); gt_boxes / crowd_boxes: B tensors (G_i, 4) / (C_i, 4), or None for no loss.
    Returns B tensors (P_i, 4) of proposals and {"loss_objectness", "loss_rpn_box_reg"} (empty
    without gt_boxes). Anchors: `sizes[l]` x `aspect_ratios[l]` per level, at stride
    padded_size // feature size (torchvision's rule). pre_nms_top_n and post_nms_top_n are (train,
    test) pairs chosen by `self.training`, like torchvision (FPN: 2000/1000 per level before NMS,
    2000/1000 per image after).
    """

    def __init__(
        self,
        head: RPNHead,
        *,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (2000, 1000),
        nms_thresh: float = 0.7,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
        crowd_thresh: float = 0.7,
    ) -> None:
        super().__init__()
        self.head = head
        self.sizes, self.aspect_ratios = tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios))
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_thresh, self.min_size, self.score_thresh = nms_thresh, min_size, score_thresh
        self.fg_iou_thresh, self.bg_iou_thresh, self.crowd_thresh = fg_iou_thresh, bg_iou_thresh, crowd_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def anchors(self, features: Sequence[torch.Tensor], padded_size: tuple[int, int]) -> list[torch.Tensor]:
        """One (H_l W_l A, 4) tensor of anchors per level."""
        grid = [tuple(f.shape[-2:]) for f in features]
        strides = [(padded_size[0] // h, padded_size[1] // w) for h, w in grid]
        # At least float32: under bf16 autocast the features are bf16, whose 8-bit mantissa would put anchors
        # (and the proposals and IoUs computed from them) 4-8 px apart at 1000 px, enough to make the box loss NaN.
        return grid_anchors(self.sizes, self.aspect_ratios, grid, strides, device=features[0].device,
                            dtype=torch.promote_types(features[0].dtype, torch.float32))

    def forward(
        self,
        features: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        padded_size: tuple[int, int],
        gt_boxes: Sequence[torch.Tensor] | None = None,
        crowd_boxes: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        objectness, deltas = flatten_predictions(*self.head(features))
        anchors = self.anchors(features, padded_size)
        num_per_level = [len(a) for a in anchors]
        anchors = torch.cat(anchors)
        objectness, deltas = objectness.to(anchors.dtype), deltas.to(anchors.dtype)  # box arithmetic in float32
        mode = 0 if self.training else 1
        proposals, _ = generate_proposals(
            objectness, deltas, anchors, num_per_level, image_sizes, pre_nms_top_n=self.pre_nms_top_n[mode],
            post_nms_top_n=self.post_nms_top_n[mode], nms_thresh=self.nms_thresh, min_size=self.min_size,
            score_thresh=self.score_thresh)
        losses: dict[str, torch.Tensor] = {}
        if gt_boxes is not None:
            loss_obj, loss_box = rpn_loss(
                objectness, deltas, anchors, gt_boxes, crowd_boxes, fg_iou_thresh=self.fg_iou_thresh,
                bg_iou_thresh=self.bg_iou_thresh, batch_size_per_image=self.batch_size_per_image,
                positive_fraction=self.positive_fraction, crowd_thresh=self.crowd_thresh)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
        return proposals, losses
