"""Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017).

`MaskRCNN` composes a backbone (ResNet-FPN or ResNet-C4), an `RPN` and `RoIHeads`, and does
torchvision's preprocessing (normalise, resize, pad to 32) and postprocessing (boxes back to the
original size, masks pasted) itself. Builders: mask_rcnn_r{18,34,50,101}_fpn, mask_rcnn_r{50,101}_c4.
`convert_torchvision_maskrcnn` maps a torchvision `maskrcnn_resnet50_fpn` state dict onto ours.

Targets are dicts per image: "boxes" (G, 4) float (x1, y1, x2, y2) in pixels, "labels" (G,) int64 in
1..K (0 is background), "masks" (G, H, W) bool/uint8, optionally "iscrowd" (G,) (crowd regions are
neither positives nor, where they cover a RoI, negatives). num_classes K excludes the background.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from pixelwise.models.backbones.fpn import NORMS, ResNetC4, ResNetFPN, resnet_trunk
from pixelwise.models.heads.roi_heads import MASK_HEADS, BoxHead, C4BoxHead, MaskHead, MLPMaskHead, RoIHeads, mask_channels
from pixelwise.models.heads.rpn import RPN, RPNHead
from pixelwise.models.weights import WeightsError, fit_state_dict, load_state_dict
from pixelwise.ops.anchors import C4_RATIOS, C4_SIZES, FPN_RATIOS, FPN_SIZES
from pixelwise.ops.masks import paste_masks
from pixelwise.registry import register_model
from pixelwise.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MaskRCNN", "batch_images", "convert_torchvision_maskrcnn", "mask_rcnn_r101_c4",
    "mask_rcnn_r101_fpn", "mask_rcnn_r18_fpn", "mask_rcnn_r34_fpn", "mask_rcnn_r50_c4", "mask_rcnn_r50_fpn",
    "resize_boxes", "resize_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _scale(size: Sequence[int], min_size: int, max_size: int) -> float:
    return min(min_size / min(size), max_size / max(size))


def resize_image(image: torch.Tensor, min_size: int, max_size: int,
                 scale: float | None = None) -> tuple[torch.Tensor, float]:
    """(C, H', W') image and its scale factor: shorter side to min_size unless the longer would exceed
    max_size (FPN / Mask R-CNN section 3.1: 800 and 1333), or resized by `scale` when given. Bilinear, exactly
    as torchvision's GeneralizedRCNNTransform (scale_factor with recompute_scale_factor=True, align_corners=False)."""
    scale = _scale(image.shape[-2:], min_size, max_size) if scale is None else scale
    # A very thin image keeps at least one pixel across (torchvision's arithmetic would give 0).
    scale = max(scale, 1.0 / min(image.shape[-2:]))
    out = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                        align_corners=False)[0]
    return out, scale


def resize_boxes(boxes: torch.Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> torch.Tensor:
    """(N, 4) boxes scaled from an image of original_size (H, W) to new_size (H', W'), torchvision's arithmetic."""
    ratio_h, ratio_w = (torch.tensor(s, dtype=torch.float32, device=boxes.device)
                        / torch.tensor(s0, dtype=torch.float32, device=boxes.device)
                        for s, s0 in zip(new_size, original_size))
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def batch_images(images: Sequence[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom and right to the largest size rounded up to size_divisible."""
    c = max(img.shape[0] for img in images)
    h = int(math.ceil(max(img.shape[1] for img in images) / size_divisible) * size_divisible)
    w = int(math.ceil(max(img.shape[2] for img in images) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), c, h, w))
    for i, img in enumerate(images):
        batch[i, : img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
    return batch


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


class MaskRCNN(nn.Module):
    """forward(images, targets=None, *, detect=None) -> {"losses": {...}, "detections": [...]}.

    images: list of (3, H_i, W_i) float tensors in [0, 1], any sizes. targets: list of dicts (see the
    module doc). "losses" (loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg,
    loss_mask: scalars) is present whenever targets are given; "detections" whenever detect is True,
    and by default (detect=None) when the model is in eval mode or no targets are given. Each
    detection dict holds "boxes" (D, 4) in the ORIGINAL image's pixels, "labels" (D,) in 1..K,
    "scores" (D,), "masks" (D, H_i, W_i) bool (probabilities if `mask_threshold` is None).

    model.training picks only what torchvision's does: BatchNorm/GroupNorm behaviour, the RPN's
    train/test proposal numbers and, with several min_size values, a random training scale.
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads,
        *,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        size_divisible: int = 32,
        mask_threshold: float | None = 0.5,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size, self.size_divisible, self.mask_threshold = max_size, size_divisible, mask_threshold
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @property
    def num_classes(self) -> int:
        return self.roi_heads.num_classes

    def _check(self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None) -> None:
        if not isinstance(images, (list, tuple)) or not images:
            raise ConfigError(f"MaskRCNN: images must be a non-empty list of (3, H, W) tensors, got {type(images).__name__}")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
                raise ConfigError(f"MaskRCNN: images[{i}] is {img.dtype} {tuple(img.shape)}, "
                                 "expected float (3, H, W) in [0, 1]")
        if targets is None:
            return
        if len(targets) != len(images):
            raise ConfigError(f"MaskRCNN: {len(targets)} targets for {len(images)} images")
        for i, (img, t) in enumerate(zip(images, targets)):
            missing = [k for k in ("boxes", "labels", "masks") if k not in t]
            if missing:
                raise ConfigError(f"MaskRCNN: targets[{i}] has no {missing}; expected boxes, labels, masks")
            boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
                raise ConfigError(f"MaskRCNN: targets[{i}]['boxes'] is {boxes.dtype} {tuple(boxes.shape)}, "
                                 "expected float (G, 4)")
            bad = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0]
            if len(bad):
                raise ConfigError(f"MaskRCNN: targets[{i}]['boxes'][{int(bad[0])}] = {boxes[bad[0]].tolist()} "
                                 "has no positive width and height (x1 < x2, y1 < y2 expected)")
            in_range = len(labels) == 0 or 1 <= int(labels.min()) <= int(labels.max()) <= self.num_classes
            if labels.shape != (len(boxes),) or not in_range:
                raise ConfigError(f"MaskRCNN: targets[{i}]['labels'] = {labels.tolist()[:10]}, expected {len(boxes)} "
                                 f"labels in 1..{self.num_classes} (0 is background)")
            if masks.shape != (len(boxes), *img.shape[-2:]):
                raise ConfigError(f"MaskRCNN: targets[{i}]['masks'] is {tuple(masks.shape)}, expected "
                                 f"{(len(boxes), *img.shape[-2:])} (one mask per box, image size)")

    def image_scale(self, size: Sequence[int]) -> float:
        """The factor an image of `size` (H, W) is resized by at inference."""
        return _scale(size, self.min_size[-1], self.max_size)

    def preprocess(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None, scale: float | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[dict[str, torch.Tensor]] | None]:
        """(batch (B, 3, H, W), resized sizes, resized targets split into non-crowd boxes / labels / masks
        and "crowd_boxes") like torchvision's GeneralizedRCNNTransform; `scale` resizes every image by that
        factor instead."""
        resized, sizes, out_targets = [], [], [] if targets is not None else None
        for i, image in enumerate(images):
            min_size = self.min_size[-1]
            if self.training:  # one draw per image even for a single size, as torchvision (same RNG stream)
                min_size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
            image = _plain(image)
            mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)[:, None, None]
            std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)[:, None, None]
            image, factor = resize_image((image - mean) / std, min_size, self.max_size, scale)
            resized.append(image)
            sizes.append((image.shape[-2], image.shape[-1]))
            if targets is None:
                continue
            t = {k: _plain(v) for k, v in targets[i].items() if isinstance(v, torch.Tensor)}
            boxes = resize_boxes(t["boxes"], images[i].shape[-2:], image.shape[-2:])
            masks = t["masks"]
            if len(masks):
                masks = F.interpolate(masks[:, None].float(), scale_factor=factor, recompute_scale_factor=True)[:, 0].byte()
            else:
                masks = masks.new_zeros((0, *image.shape[-2:]), dtype=torch.uint8)
            crowd = t["iscrowd"].bool() if "iscrowd" in t else torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
            out_targets.append({"boxes": boxes[~crowd], "labels": t["labels"][~crowd], "masks": masks[~crowd],
                                "crowd_boxes": boxes[crowd]})
        return batch_images(resized, self.size_divisible), sizes, out_targets

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        *,
        detect: bool | None = None,
        scale: float | None = None,
    ) -> dict:
        """scale: resize every image by this factor instead of to min_size / max_size (sliced inference at the
        whole image's scale)."""
        self._check(images, targets)
        if detect is None:
            detect = targets is None or not self.training
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, prepared = self.preprocess(images, targets, scale)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(
            features, sizes, tuple(batch.shape[-2:]),
            [t["boxes"] for t in prepared] if prepared is not None else None,
            [t["crowd_boxes"] for t in prepared] if prepared is not None else None)
        roi_features = features[: len(self.roi_heads.spatial_scales)]
        detections, roi_losses = self.roi_heads(roi_features, proposals, sizes, prepared, detect)
        out: dict = {}
        if targets is not None:
            out["losses"] = {**rpn_losses, **roi_losses}
        if detect:
            out["detections"] = [self.postprocess(d, s, o) for d, s, o in zip(detections, sizes, original_sizes)]
        return out

    def postprocess(self, detection: dict[str, torch.Tensor], size: tuple[int, int],
                    original_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Boxes rescaled from the resized image to the original; masks pasted at mask_threshold
        (Mask R-CNN section 3.1, "Inference": M x M mask resized to the box, binarised at 0.5)."""
        boxes = resize_boxes(detection["boxes"], size, original_size)
        masks = paste_masks(detection["mask_probs"], boxes, original_size, threshold=self.mask_threshold)
        return {"boxes": boxes, "labels": detection["labels"], "scores": detection["scores"], "masks": masks}


# ------------------------------------------------------------------------------------------- weights

_COCO_NAMES = ("coco", "DEFAULT", "COCO_V1")


def convert_torchvision_maskrcnn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision `maskrcnn_resnet50_fpn` state dict -> our `mask_rcnn_r50_fpn` (sigmoid, class-specific, fcn).

    Renames rpn.head.conv.0.0 -> rpn.head.conv, roi_heads.box_predictor.* -> roi_heads.box_head.*,
    roi_heads.mask_head.{i}.0 -> roi_heads.mask_head.mask_fcn{i+1}.0, roi_heads.mask_predictor.* ->
    roi_heads.mask_head.*; drops BatchNorm's num_batches_tracked and the unused background row of
    mask_fcn_logits (torchvision predicts K + 1 masks and never reads channel 0). Accepts torchvision's
    older key names (rpn.head.conv.weight, mask_head.mask_fcn{i}.weight) too.
    """
    if "rpn.head.cls_logits.weight" not in state or "roi_heads.mask_predictor.mask_fcn_logits.weight" not in state:
        raise WeightsError("not a torchvision Mask R-CNN state dict: no 'rpn.head.cls_logits.weight' and "
                         "'roi_heads.mask_predictor.mask_fcn_logits.weight' keys")
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("backbone.body.fc."):
            continue
        new = key
        if key.startswith("rpn.head.conv."):
            new = "rpn.head.conv." + key.rsplit(".", 1)[1]
        elif key.startswith("roi_heads.box_predictor."):
            new = "roi_heads.box_head." + key[len("roi_heads.box_predictor."):]
        elif key.startswith("roi_heads.mask_predictor."):
            new = "roi_heads.mask_head." + key[len("roi_heads.mask_predictor."):]
            if new.startswith("roi_heads.mask_head.mask_fcn_logits."):
                value = value[1:]
        elif key.startswith("roi_heads.mask_head."):
            parts = key.split(".")
            if parts[2].isdigit():  # mask_head.{i}.0.weight
                new = f"roi_heads.mask_head.mask_fcn{int(parts[2]) + 1}." + ".".join(parts[3:])
            else:  # mask_head.mask_fcn{i}.weight (before torchvision 0.13)
                new = f"roi_heads.mask_head.{parts[2]}.0." + ".".join(parts[3:])
        out[new] = value
    return out


def _fit(module: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """fit_state_dict, ignoring BatchNorm's num_batches_tracked counters in either direction."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = module.state_dict()
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
    fit_state_dict(module, state, what=what)


def _set_frozen_eps(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps


def _load_weights(model: MaskRCNN, weights: str, *, depth: int, c4: bool) -> None:
    enum = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    if depth != 50 or c4:
        if str(weights) in _COCO_NAMES:
            raise WeightsError(f"weights={weights!r}: torchvision's COCO weights exist for mask_rcnn_r50_fpn only")
    state = load_state_dict(weights, what="weights", enum=enum if depth == 50 and not c4 else None, names=_COCO_NAMES)
    if "rpn.head.cls_logits.weight" in state and "roi_heads.mask_predictor.mask_fcn_logits.weight" in state:
        state = convert_torchvision_maskrcnn(state)
    _fit(model, state, what=f"weights {weights!r}")
    # torchvision's COCO_V1 model was trained (in Detectron) with FrozenBatchNorm eps = 0.
    if str(weights) in _COCO_NAMES or Path(str(weights)).name == Path(enum.url).name:
        _set_frozen_eps(model, 0.0)


def _load_backbone_weights(model: MaskRCNN, backbone_weights: str, *, depth: int, norm: str, c4: bool) -> None:
    names = ("imagenet", "DEFAULT", "IMAGENET1K_V1")
    if norm == "gn" and str(backbone_weights) in names:
        raise WeightsError("backbone_weights='imagenet' are BatchNorm weights; norm='gn' puts GroupNorm in the trunk "
                           "(training from scratch). Use norm='bn', or a local file of a GroupNorm trunk.")
    enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
    state = load_state_dict(backbone_weights, what="backbone_weights", enum=enum, names=names)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    what = f"backbone_weights {backbone_weights!r}"
    if c4:
        _fit(model.roi_heads.res5, {k[len("layer4."):]: v for k, v in state.items() if k.startswith("layer4.")}, what=what)
        state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    _fit(model.backbone.body, state, what=what)


# ------------------------------------------------------------------------------------------- builders

def _check_arguments(**args) -> None:
    """Counts, pairs and probabilities of the builder's arguments, named when out of range."""
    def positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    sizes = args["min_size"] if isinstance(args["min_size"], (list, tuple)) else [args["min_size"]]
    checks = [
        ("min_size", bool(sizes) and all(positive_int(v) for v in sizes), "a positive side in pixels, or a list of them"),
        ("max_size", positive_int(args["max_size"]) and args["max_size"] >= max(sizes, default=1),
         "a positive side in pixels >= min_size"),
        *[(k, isinstance(args[k], (list, tuple)) and len(args[k]) == 2 and all(positive_int(v) for v in args[k]),
           "a pair [train, test] of positive counts, such as [2000, 1000]") for k in ("rpn_pre_nms_top_n",
                                                                                   "rpn_post_nms_top_n")],
        *[(k, positive_int(args[k]), "an integer >= 1") for k in ("rpn_batch_size_per_image", "box_batch_size_per_image",
                                                                   "detections_per_img")],
        *[(k, isinstance(args[k], (int, float)) and 0 < args[k] <= 1, "a fraction in (0, 1]")
          for k in ("rpn_positive_fraction", "box_positive_fraction")],
        *[(k, isinstance(args[k], (int, float)) and 0 <= args[k] <= 1, "a value in [0, 1]")
          for k in ("box_score_thresh", "box_nms_thresh")],
        ("mask_threshold", args["mask_threshold"] is None or (isinstance(args["mask_threshold"], (int, float))
                                                               and 0 <= args["mask_threshold"] <= 1),
         "a probability in [0, 1], or null for probabilities"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={args[key]!r}, expected {expected}")


def _build(
    *, depth: int, c4: bool, num_classes: int, min_size: int | Sequence[int], max_size: int, frozen_bn: bool,
    norm: str, mask_roi: str, mask_loss: str, class_agnostic: bool, mask_head: str,
    rpn_batch_size_per_image: int, rpn_positive_fraction: float, rpn_pre_nms_top_n: tuple[int, int],
    rpn_post_nms_top_n: tuple[int, int], box_batch_size_per_image: int, box_positive_fraction: float,
    box_score_thresh: float, box_nms_thresh: float, detections_per_img: int, mask_threshold: float | None,
    trainable_layers: int | None, weights: str | None, backbone_weights: str | None,
) -> MaskRCNN:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r}, expected the number of object classes >= 1 (background excluded)")
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r}, expected one of {NORMS}")
    if mask_head not in MASK_HEADS:
        raise ConfigError(f"mask_head={mask_head!r}, expected one of {MASK_HEADS}")
    if c4 and mask_head != "fcn":
        raise ConfigError("mask_head='mlp' is defined for the FPN models (Table 2e); C4 uses the res5 deconv head")
    _check_arguments(min_size=min_size, max_size=max_size, rpn_pre_nms_top_n=rpn_pre_nms_top_n,
                     rpn_post_nms_top_n=rpn_post_nms_top_n, rpn_batch_size_per_image=rpn_batch_size_per_image,
                     box_batch_size_per_image=box_batch_size_per_image, detections_per_img=detections_per_img,
                     mask_threshold=mask_threshold, rpn_positive_fraction=rpn_positive_fraction,
                     box_positive_fraction=box_positive_fraction, box_score_thresh=box_score_thresh,
                     box_nms_thresh=box_nms_thresh)
    channels = mask_channels(num_classes, mask_loss, class_agnostic)
    if trainable_layers is None:
        trainable_layers = 3 if (weights or backbone_weights) else 5
    trunk = resnet_trunk(depth, norm=norm, frozen_bn=frozen_bn, trainable_layers=trainable_layers)
    head_norm = "gn" if norm == "gn" else None
    sampling = dict(batch_size_per_image=box_batch_size_per_image, positive_fraction=box_positive_fraction,
                    score_thresh=box_score_thresh, nms_thresh=box_nms_thresh, detections_per_img=detections_per_img,
                    mask_roi=mask_roi, mask_loss=mask_loss, class_agnostic=class_agnostic, num_classes=num_classes)
    if c4:
        backbone = ResNetC4(trunk)
        res5 = backbone.pop_res5()
        res5_channels = trunk.channels["c5"]
        rpn = RPN(RPNHead(backbone.out_channels, len(C4_SIZES[0]) * len(C4_RATIOS[0])), sizes=C4_SIZES,
                  aspect_ratios=C4_RATIOS, pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n,
                  batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction)
        roi_heads = RoIHeads(C4BoxHead(res5_channels, num_classes), MaskHead(res5_channels, channels, num_convs=0),
                             strides=backbone.strides, res5=res5, sampling_ratio=0, mask_resolution=14, **sampling)
    else:
        backbone = ResNetFPN(trunk, 256, norm=norm)
        rpn = RPN(RPNHead(256, len(FPN_RATIOS[0])), sizes=FPN_SIZES, aspect_ratios=FPN_RATIOS,
                  pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n,
                  batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction)
        box_head = BoxHead(256, 7, num_classes, num_convs=4 if norm == "gn" else 0, norm=head_norm)
        mhead = (MaskHead(256, channels, norm=head_norm) if mask_head == "fcn"
                 else MLPMaskHead(256, 14, channels, mask_size=28))
        roi_heads = RoIHeads(box_head, mhead, strides=backbone.strides[: backbone.roi_levels], sampling_ratio=2,
                             mask_resolution=14, **sampling)
    model = MaskRCNN(backbone, rpn, roi_heads, min_size=min_size, max_size=max_size, mask_threshold=mask_threshold)
    if weights is not None:
        _load_weights(model, weights, depth=depth, c4=c4)
    elif backbone_weights is not None:
        _load_backbone_weights(model, backbone_weights, depth=depth, norm=norm, c4=c4)
    return model


_DOC_ARGS = """
    num_classes: K object classes, background excluded (labels 1..K; COCO in torchvision's numbering: 90).
    min_size, max_size: resize the shorter side to min_size (a tuple: one drawn per training image) unless
        the longer side would exceed max_size; the batch is padded to a multiple of 32.
    frozen_bn: FrozenBatchNorm2d in the trunk (the paper's and torchvision's setting); False: trainable BN.
    norm: "bn" (the paper's model: BN in the trunk only) or "gn" (GroupNorm(32) in the trunk, FPN, a
        4conv1fc box head and the mask head: detectron2's recipe for training from scratch; frozen_bn unused).
    mask_roi: "roi_align" | "roi_pool" | "roi_warp" for the mask branch (Table 2c; C4: for both branches).
    mask_loss: "sigmoid" | "softmax" | "softmax_fg" (Table 2b; see pixelwise.models.heads.roi_heads).
    class_agnostic: one mask for every class instead of K (Table 2b / section 4.2 "class-agnostic masks").
    mask_head: "fcn" (Fig. 4) or "mlp" (Table 2e).
    rpn_batch_size_per_image, rpn_positive_fraction: RPN anchors sampled per image (256, 0.5).
    rpn_pre_nms_top_n, rpn_post_nms_top_n: (train, test) proposals per level before / per image after NMS.
    box_batch_size_per_image, box_positive_fraction: RoIs sampled per image (512 FPN, 64 C4; 0.25).
    box_score_thresh, box_nms_thresh, detections_per_img: inference (0.05, 0.5, 100).
    mask_threshold: binarise pasted masks at this probability; None returns probabilities.
    trainable_layers: trunk stages trained, from layer4 down (torchvision's; default 3 with weights, else 5).
    weights: None, "coco" (torchvision's maskrcnn_resnet50_fpn COCO_V1; downloads; r50_fpn only) or a local
        path of a torchvision Mask R-CNN state dict or a pixelwise checkpoint of this model.
    backbone_weights: None, "imagenet" (torchvision's ResNet IMAGENET1K_V1; downloads) or a local path.
"""


def _builder(depth: int, c4: bool):
    """The registered builder of one Mask R-CNN; C4 and FPN differ in their proposal and RoI sampling defaults."""
    pre_nms = (12000, 6000) if c4 else (2000, 1000)
    rois = 64 if c4 else 512

    def builder(
        *, num_classes: int = 90, min_size: int | tuple[int, ...] = 800, max_size: int = 1333,
        frozen_bn: bool = True, norm: str = "bn", mask_roi: str = "roi_align", mask_loss: str = "sigmoid",
        class_agnostic: bool = False, mask_head: str = "fcn", rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5, rpn_pre_nms_top_n: tuple[int, int] = pre_nms,
        rpn_post_nms_top_n: tuple[int, int] = (2000, 1000), box_batch_size_per_image: int = rois,
        box_positive_fraction: float = 0.25, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5,
        detections_per_img: int = 100, mask_threshold: float | None = 0.5, trainable_layers: int | None = None,
        weights: str | None = None, backbone_weights: str | None = None,
    ) -> MaskRCNN:
        return _build(
            depth=depth, c4=c4, num_classes=num_classes, min_size=min_size, max_size=max_size,
            frozen_bn=frozen_bn, norm=norm, mask_roi=mask_roi, mask_loss=mask_loss, class_agnostic=class_agnostic,
            mask_head=mask_head, rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_positive_fraction=rpn_positive_fraction, rpn_pre_nms_top_n=rpn_pre_nms_top_n,
            rpn_post_nms_top_n=rpn_post_nms_top_n, box_batch_size_per_image=box_batch_size_per_image,
            box_positive_fraction=box_positive_fraction, box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh, detections_per_img=detections_per_img, mask_threshold=mask_threshold,
            trainable_layers=trainable_layers, weights=weights, backbone_weights=backbone_weights,
        )
    builder.__name__ = builder.__qualname__ = f"mask_rcnn_r{depth}_{'c4' if c4 else 'fpn'}"
    summary = (f"Mask R-CNN, ResNet-{depth}-C4: res4 backbone, res5 RoI head on 14x14 RoI features, deconv mask head, "
               "15 anchors (Fig. 4 left)." if c4 else
               f"Mask R-CNN, ResNet-{depth}-FPN (He et al. 2017, section 3; FPN RoI heads of Fig. 4 right).")
    builder.__doc__ = summary + "\n" + _DOC_ARGS
    return register_model(builder, task="instance")


mask_rcnn_r18_fpn = _builder(18, c4=False)
mask_rcnn_r34_fpn = _builder(34, c4=False)
mask_rcnn_r50_fpn = _builder(50, c4=False)
mask_rcnn_r101_fpn = _builder(101, c4=False)
mask_rcnn_r50_c4 = _builder(50, c4=True)
mask_rcnn_r101_c4 = _builder(101, c4=True)
