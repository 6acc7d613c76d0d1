"""Mask R-CNN's second stage: box head, mask head (FCN or MLP), their losses and post-processing.

Modules: `BoxHead` (FPN: [4 conv +] 2 fc, or the C4 res5 predictor), `MaskHead` (4 conv + deconv,
Fig. 4), `MLPMaskHead` (Table 2e), `RoIHeads` (composes them with RoI pooling and sampling). Pure
functions beside them: `sample_proposals`, `fast_rcnn_loss`, `box_detections`, `mask_loss`,
`mask_probabilities`. Eval arithmetic follows torchvision's `RoIHeads`, so converted weights give
the same detections.

Mask losses (Table 2b), mask_channels C and the channel read for a RoI of class k in 1..K:

- "sigmoid" (the paper's default): C = K (1 if class_agnostic) independent binary masks; per-pixel
  binary cross-entropy on channel k - 1 (0) only, averaged over the M x M pixels and RoIs.
- "softmax": the multinomial per-pixel loss "as commonly used in FCN": C = K + 1 channels, channel 0
  background; at each pixel a (K + 1)-way softmax whose target is k on the mask's pixels (target
  >= 0.5) and 0 elsewhere, averaged over pixels and RoIs. The classes compete at every pixel, which is
  what the ablation measures. The mask read at inference is softmax channel k (channel 1 of 2 when
  class_agnostic, which then is a two-way background/foreground softmax).
- "softmax_fg": C = K channels without background; a K-way softmax whose target is k - 1, on the
  mask's foreground pixels only (background pixels give no loss, so nothing teaches the mask where
  the object is not; kept for the ablation, not recommended). Not defined for class_agnostic.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms

from pixelwise.models.backbones.fpn import c2_xavier_fill, group_norm
from pixelwise.models.heads.rpn import crowd_overlap
from pixelwise.ops.boxes import (
    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BOX_HEAD_WEIGHTS, box_iou, clip_boxes, decode, encode, match,
    remove_small, sample_balanced,
)
from pixelwise.ops.masks import mask_targets
from pixelwise.ops.poolers import METHODS, RoIPooler, as_rois
from pixelwise.errors import ConfigError

__all__ = [
    "BoxHead", "C4BoxHead", "MASK_HEADS", "MASK_LOSSES", "MLPMaskHead", "MaskHead", "RoIHeads", "box_detections",
    "fast_rcnn_loss", "mask_channel", "mask_channels", "mask_loss", "mask_probabilities", "sample_proposals",
]

MASK_LOSSES = ("sigmoid", "softmax", "softmax_fg")
MASK_HEADS = ("fcn", "mlp")


def mask_channels(num_classes: int, loss: str, class_agnostic: bool) -> int:
    """Number of mask logit channels for K = num_classes foreground classes (see the module doc)."""
    if loss not in MASK_LOSSES:
        raise ConfigError(f"mask_loss={loss!r}, expected one of {MASK_LOSSES}")
    if loss == "softmax_fg" and class_agnostic:
        raise ConfigError("mask_loss='softmax_fg' needs class-specific masks (a softmax over one channel is constant); "
                         "use class_agnostic=False, or mask_loss='softmax' or 'sigmoid'")
    return (1 if class_agnostic else num_classes) + (1 if loss == "softmax" else 0)


def mask_channel(labels: torch.Tensor, loss: str, class_agnostic: bool) -> torch.Tensor:
    """(P,) channel holding the mask of each RoI of class labels (P,) in 1..K."""
    if loss == "softmax":
        return torch.ones_like(labels) if class_agnostic else labels
    return torch.zeros_like(labels) if class_agnostic else labels - 1


def _predictor_init(cls_score: nn.Linear, bbox_pred: nn.Linear) -> None:
    nn.init.normal_(cls_score.weight, std=0.01)  # Detectron's initialisation of the Fast R-CNN outputs
    nn.init.normal_(bbox_pred.weight, std=0.001)
    nn.init.zeros_(cls_score.bias)
    nn.init.zeros_(bbox_pred.bias)


class BoxHead(nn.Module):
    """RoI features (R, C, S, S) -> (class_logits (R, K + 1), box_deltas (R, 4 (K + 1))); class 0 is background.

    FPN section 4.2: two hidden fc layers of fc_dim (1024) with ReLU (`fc6`, `fc7`, torchvision's
    names). num_convs > 0 puts that many 3x3 conv (+ GroupNorm with norm="gn") + ReLU layers first and
    keeps one fc (detectron2's "4conv1fc" head of its GN recipes).
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, *, fc_dim: int = 1024,
                 num_convs: int = 0, conv_dim: int = 256, norm: str | None = None) -> None:
        super().__init__()
        layers, c = [], in_channels
        for _ in range(num_convs):
            conv = nn.Conv2d(c, conv_dim, 3, padding=1, bias=norm is None)
            c2_xavier_fill(conv)
            layers += [conv] + ([group_norm(conv_dim)] if norm == "gn" else []) + [nn.ReLU(inplace=True)]
            c = conv_dim
        self.convs = nn.Sequential(*layers)
        self.fc6 = nn.Linear(c * resolution * resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim) if num_convs == 0 else None
        for fc in (self.fc6, self.fc7):
            if fc is not None:
                c2_xavier_fill(fc)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * (num_classes + 1))
        _predictor_init(self.cls_score, self.bbox_pred)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc6(self.convs(x).flatten(1)), inplace=True)
        if self.fc7 is not None:
            x = F.relu(self.fc7(x), inplace=True)
        return self.cls_score(x), self.bbox_pred(x)


class C4BoxHead(nn.Module):
    """res5 output (R, C, 7, 7) -> (class_logits (R, K + 1), box_deltas (R, 4 (K + 1))), after global average
    pooling (Mask R-CNN Fig. 4 left; ResNet's own head)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * (num_classes + 1))
        _predictor_init(self.cls_score, self.bbox_pred)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.mean(dim=(2, 3))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """RoI features (R, C, S, S) -> mask logits (R, num_outputs, 2S, 2S).

    Fig. 4 right (FPN): four 3x3 convs of conv_dim (+ GroupNorm with norm="gn") with ReLU
    (`mask_fcn1..4`), a 2x2 stride-2 deconvolution with ReLU (`conv5_mask`) and a 1x1 conv to
    num_outputs masks (`mask_fcn_logits`). num_convs=0 is the C4 head of Fig. 4 left (deconv on res5).
    """

    def __init__(self, in_channels: int, num_outputs: int, *, num_convs: int = 4, conv_dim: int = 256,
                 norm: str | None = None) -> None:
        super().__init__()
        c = in_channels
        for i in range(num_convs):
            conv = nn.Conv2d(c, conv_dim, 3, padding=1, bias=norm is None)
            block = nn.Sequential(conv, group_norm(conv_dim)) if norm == "gn" else nn.Sequential(conv)
            self.add_module(f"mask_fcn{i + 1}", block)
            c = conv_dim
        self.num_convs = num_convs
        self.conv5_mask = nn.ConvTranspose2d(c, conv_dim, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(conv_dim, num_outputs, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_convs):
            x = F.relu(getattr(self, f"mask_fcn{i + 1}")(x), inplace=True)
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x), inplace=True))


class MLPMaskHead(nn.Module):
    """RoI features (R, C, S, S) -> mask logits (R, num_outputs, M, M): fc 1024, fc 1024, fc num_outputs M^2
    (Mask R-CNN Table 2e, "MLP"; the fc layers lose the pixel-to-pixel correspondence)."""

    def __init__(self, in_channels: int, resolution: int, num_outputs: int, *, mask_size: int = 28,
                 fc_dim: int = 1024) -> None:
        super().__init__()
        self.num_outputs, self.mask_size = num_outputs, mask_size
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.mask_fc_logits = nn.Linear(fc_dim, num_outputs * mask_size * mask_size)
        for fc in (self.fc1, self.fc2):
            c2_xavier_fill(fc)
        nn.init.normal_(self.mask_fc_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fc_logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)), inplace=True)), inplace=True)
        return self.mask_fc_logits(x).view(-1, self.num_outputs, self.mask_size, self.mask_size)


def sample_proposals(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    crowd_boxes: Sequence[torch.Tensor] | None = None,
    *,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.5,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    crowd_thresh: float = 0.7,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Image-centric RoI sampling (Fast R-CNN section 2.3; Mask R-CNN section 3.1, "Training").

    Per image: the ground truth (G_i, 4) is added to the proposals (P_i, 4); a proposal is positive
    (its gt's label) at IoU >= 0.5 with a non-crowd ground truth, background below; a background
    proposal covered >= crowd_thresh by a crowd box (C_i, 4) is ignored; batch_size_per_image RoIs
    are drawn with up to positive_fraction positives. Returns per image the sampled (S_i, 4) RoIs,
    their (S_i,) matched gt index (0 for background), (S_i,) labels (0 = background) and (S_i, 4)
    box regression targets (weights 10, 10, 5, 5). Same draws as torchvision with the same seed.
    """
    out_props, out_matched, out_labels, out_targets = [], [], [], []
    for i, (props, gt, gt_lab) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        gt = gt.to(props.dtype)
        props = torch.cat([props, gt])
        if gt.numel() == 0:
            matched = torch.zeros(len(props), dtype=torch.int64, device=props.device)
            labels = torch.zeros(len(props), dtype=torch.int64, device=props.device)
        else:
            raw = match(box_iou(gt, props), fg_iou_thresh, bg_iou_thresh)
            matched = raw.clamp(min=0)
            labels = gt_lab[matched].to(torch.int64)
            labels[raw == BELOW_LOW_THRESHOLD] = 0
            labels[raw == BETWEEN_THRESHOLDS] = -1
        if crowd_boxes is not None and crowd_boxes[i].numel():
            labels[(labels == 0) & (crowd_overlap(crowd_boxes[i].to(props.dtype), props) >= crowd_thresh)] = -1
        pos, neg = sample_balanced(labels, batch_size_per_image, positive_fraction)
        keep = torch.where(pos | neg)[0]
        props, matched, labels = props[keep], matched[keep], labels[keep]
        if gt.numel():
            targets = encode(gt[matched], props, BOX_HEAD_WEIGHTS)
        else:
            targets = torch.zeros_like(props)
        out_props.append(props)
        out_matched.append(matched)
        out_labels.append(labels)
        out_targets.append(targets)
    return out_props, out_matched, out_labels, out_targets


def fast_rcnn_loss(
    class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor, regression_targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_classifier, loss_box_reg) from logits (R, K + 1), deltas (R, 4 (K + 1)), labels (R,) and
    targets (R, 4) of all sampled RoIs: cross-entropy, and smooth L1 (beta 1/9) of the gt class's
    deltas on positives, summed and divided by R (Fast R-CNN eq. 1, torchvision's normalisation)."""
    loss_classifier = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(len(box_deltas), -1, 4)[pos, labels[pos]]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[pos], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
    return loss_classifier, loss_box


def box_detections(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    proposals: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image (boxes (D, 4), scores (D,), labels (D,) in 1..K), best first.

    Mask R-CNN section 3.1, "Inference": softmax scores, each proposal (P_i, 4) decoded once per
    class, clipped; class scores > score_thresh kept, boxes under min_size dropped, NMS at nms_thresh
    per class, the best detections_per_img kept. Same as torchvision's `postprocess_detections`.
    """
    num_classes = class_logits.shape[-1]
    boxes = decode(box_deltas, torch.cat(list(proposals)), BOX_HEAD_WEIGHTS)
    boxes = boxes.reshape(len(box_deltas), box_deltas.shape[-1] // 4, 4)  # explicit: there may be no proposals
    scores = F.softmax(class_logits, -1)
    counts = [len(p) for p in proposals]
    results = []
    for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes):
        b = clip_boxes(b, size)
        labels = torch.arange(num_classes, device=b.device).view(1, -1).expand_as(s)
        b, s, labels = b[:, 1:].reshape(-1, 4), s[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(s > score_thresh)[0]
        b, s, labels = b[keep], s[keep], labels[keep]
        keep = remove_small(b, min_size)
        b, s, labels = b[keep], s[keep], labels[keep]
        keep = batched_nms(b, s, labels, nms_thresh)[:detections_per_img]
        results.append((b[keep], s[keep], labels[keep]))
    return results


def mask_loss(
    mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, *, loss: str = "sigmoid",
    class_agnostic: bool = False,
) -> torch.Tensor:
    """Scalar L_mask from logits (P, C, M, M) of positive RoIs, their labels (P,) in 1..K and mask targets
    (P, M, M) in [0, 1] (see the module doc for each loss; Mask R-CNN section 3, Table 2b)."""
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    index = torch.arange(len(labels), device=labels.device)
    channel = mask_channel(labels, loss, class_agnostic)
    if loss == "sigmoid":
        return F.binary_cross_entropy_with_logits(mask_logits[index, channel], targets)
    inside = targets >= 0.5
    if loss == "softmax":
        target_map = torch.where(inside, channel[:, None, None], torch.zeros_like(channel)[:, None, None])
        return F.cross_entropy(mask_logits, target_map)
    if not inside.any():
        return mask_logits.sum() * 0
    target_map = torch.where(inside, channel[:, None, None], torch.full_like(channel, -100)[:, None, None])
    return F.cross_entropy(mask_logits, target_map, ignore_index=-100)


def mask_probabilities(
    mask_logits: torch.Tensor, labels: torch.Tensor, *, loss: str = "sigmoid", class_agnostic: bool = False
) -> torch.Tensor:
    """(D, M, M) probabilities of the predicted class's mask, from logits (D, C, M, M) and labels (D,) in 1..K."""
    index = torch.arange(len(labels), device=labels.device)
    channel = mask_channel(labels, loss, class_agnostic)
    if loss == "sigmoid":
        return mask_logits[index, channel].sigmoid()
    return F.softmax(mask_logits, dim=1)[index, channel]


class RoIHeads(nn.Module):
    """Box and mask branches on the RoIs of a feature pyramid (FPN) or on res4 with res5 as head (C4).

    forward(features, proposals, image_sizes, targets, detect) -> (detections, losses):
    features: the backbone's maps (B, C, H_l, W_l), finest first; proposals: B tensors (P_i, 4);
    image_sizes: (H, W) of each resized image before padding; targets: B dicts with non-crowd
    "boxes" (G, 4), "labels" (G,) in 1..K, "masks" (G, H, W) and "crowd_boxes" (C, 4), or None;
    detect: also return per image {"boxes" (D, 4), "labels" (D,), "scores" (D,), "mask_probs" (D, M, M)}.

    FPN: the box head reads 7x7 RoIAlign (sampling 2) features of the level given by FPN eq. 1, the
    mask head 14x14 features by `mask_roi` (Table 2c) and predicts 28x28 masks. C4 (res5 given): one
    `mask_roi` pooling of 14x14 res4 features feeds res5, shared by the box predictor and, for the
    positive RoIs in training, the mask head (Fig. 4 left, 14x14 masks); in inference the mask branch
    runs on the detections.
    """

    def __init__(
        self,
        box_head: nn.Module,
        mask_head: nn.Module,
        *,
        strides: Sequence[int],
        num_classes: int,
        res5: nn.Module | None = None,
        mask_roi: str = "roi_align",
        mask_loss: str = "sigmoid",
        class_agnostic: bool = False,
        box_resolution: int = 7,
        mask_resolution: int = 14,
        sampling_ratio: int = 2,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        crowd_thresh: float = 0.7,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if mask_roi not in METHODS:
            raise ConfigError(f"RoIHeads: mask_roi={mask_roi!r}, expected one of {METHODS}")
        mask_channels(num_classes, mask_loss, class_agnostic)
        self.box_head, self.mask_head, self.res5 = box_head, mask_head, res5
        self.spatial_scales = [1.0 / s for s in strides]
        self.num_classes, self.mask_roi = num_classes, mask_roi
        self.mask_loss, self.class_agnostic = mask_loss, class_agnostic
        self.box_resolution, self.mask_resolution, self.sampling_ratio = box_resolution, mask_resolution, sampling_ratio
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.fg_iou_thresh, self.bg_iou_thresh, self.crowd_thresh = fg_iou_thresh, bg_iou_thresh, crowd_thresh
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        # The poolers feeding the first part of each branch (no weights). An exported model may put one in its graph
        # and replace it here by one that hands the graph the features and RoIs (pixelwise.export).
        self.box_pooler = RoIPooler("roi_align", box_resolution, self.spatial_scales, sampling_ratio)
        self.mask_pooler = RoIPooler(mask_roi, mask_resolution, self.spatial_scales, sampling_ratio)

    def _box_branch(self, features: list[torch.Tensor], boxes: Sequence[torch.Tensor]):
        """(class_logits, box_deltas, res5 features or None) of the RoIs."""
        rois = as_rois(boxes, features[0].dtype)
        if self.res5 is None:
            x, features_out = self.box_pooler(features, rois), None
        else:
            x = features_out = self.res5(self.mask_pooler(features, rois))
        # Boxes are decoded and scored in float32 whatever the autocast precision of the head.
        return (*(t.to(torch.promote_types(t.dtype, torch.float32)) for t in self.box_head(x)), features_out)

    def _mask_logits(self, features: list[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.mask_pooler(features, as_rois(boxes, features[0].dtype))
        return self.mask_head(self.res5(x) if self.res5 is not None else x)

    def forward(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        detect: bool = True,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            losses = self.losses(features, proposals, targets)
        detections = self.detect(features, proposals, image_sizes) if detect else []
        return detections, losses

    def losses(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
               targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{"loss_classifier", "loss_box_reg", "loss_mask"} on RoIs sampled from proposals and ground truth."""
        rois, matched, labels, reg_targets = sample_proposals(
            proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets],
            [t["crowd_boxes"] for t in targets], fg_iou_thresh=self.fg_iou_thresh, bg_iou_thresh=self.bg_iou_thresh,
            batch_size_per_image=self.batch_size_per_image, positive_fraction=self.positive_fraction,
            crowd_thresh=self.crowd_thresh)
        class_logits, box_deltas, res5_features = self._box_branch(features, rois)
        loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(reg_targets))
        # Mask R-CNN section 3.1: L_mask is defined only on positive RoIs.
        pos = [torch.where(lab > 0)[0] for lab in labels]
        pos_rois = [r[p] for r, p in zip(rois, pos)]
        if res5_features is not None:
            mask_logits = self.mask_head(res5_features[torch.where(torch.cat(labels) > 0)[0]])
        else:
            mask_logits = self._mask_logits(features, pos_rois)
        size = mask_logits.shape[-1]
        m_targets = torch.cat([
            mask_targets(t["masks"], m[p], r, size=size) for t, m, p, r in zip(targets, matched, pos, pos_rois)
        ])
        pos_labels = torch.cat([lab[p] for lab, p in zip(labels, pos)])
        loss = mask_loss(mask_logits, pos_labels, m_targets, loss=self.mask_loss, class_agnostic=self.class_agnostic)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss}

    def detect(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes", "labels", "scores", "mask_probs"} in the resized image's coordinates."""
        class_logits, box_deltas, _ = self._box_branch(features, proposals)
        found = box_detections(class_logits, box_deltas, proposals, image_sizes, score_thresh=self.score_thresh,
                               nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img)
        boxes = [b for b, _, _ in found]
        labels = torch.cat([lab for _, _, lab in found])
        mask_logits = self._mask_logits(features, boxes)
        probs = mask_probabilities(mask_logits, labels, loss=self.mask_loss, class_agnostic=self.class_agnostic)
        probs = probs.split([len(b) for b in boxes])
        return [{"boxes": b, "labels": lab, "scores": s, "mask_probs": p} for (b, s, lab), p in zip(found, probs)]
