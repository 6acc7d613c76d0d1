"""Engine parts for instance segmentation models (Mask R-CNN): batches as lists, loss dicts, COCO AP.

Such a model takes a list of (3, H, W) images in [0, 1] and a list of target dicts, and returns
{"losses": {name: scalar}, "detections": [per-image dict]} (see pixelwise.models.mask_rcnn).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from pixelwise.progress import progress as track

from pixelwise.data.isbi_instances import to_coco
from pixelwise.metrics.coco import coco_evaluate, masks_to_rle

__all__ = ["collate_instances", "evaluate_instances", "detect", "instances_to_device", "max_detections"]


def collate_instances(batch: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """[(image, target)] -> ([images], [targets]) as plain tensors; images keep their own sizes."""
    images = [b[0].as_subclass(torch.Tensor) for b in batch]
    targets = [{k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in b[1].items()}
               for b in batch]
    return images, targets


def instances_to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device,
                        non_blocking: bool = False):
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [{k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def max_detections(model: nn.Module) -> int:
    """Detections per image the model keeps (at least COCO's 100), so that AP counts all of them."""
    heads = getattr(model, "roi_heads", None)
    return max(100, int(getattr(heads, "detections_per_img", 100)))


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The model's detections for a list of images, on the CPU, the model left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        out = model([img.to(device) for img in images], detect=True)["detections"]
    finally:
        model.train(was_training)
    return [{k: v.cpu() for k, v in d.items()} for d in out]


@torch.no_grad()
def evaluate_instances(model: nn.Module, dataset, device: torch.device, *, batch_size: int = 1,
                       progress: bool = True) -> dict:
    """COCO box and mask AP (bbox_AP, segm_AP, ...; see metrics.coco_evaluate) of `model` on `dataset`.

    The ground truth is the dataset as read (with its transforms), converted by data.to_coco, so
    crowd regions are scored as COCO does.
    """
    gt = to_coco(dataset)
    detections = []
    indices = range(0, len(dataset), batch_size)
    for start in track(indices, desc="evaluate", unit="batch", enabled=progress, leave=False):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for (_, target), d in zip(samples, detect(model, [s[0].as_subclass(torch.Tensor) for s in samples], device)):
            detections.append({"image_id": int(target["image_id"]), "boxes": d["boxes"], "scores": d["scores"],
                               "labels": d["labels"], "masks": masks_to_rle(d["masks"])})
    metrics = coco_evaluate(gt, detections, dataset.category_ids, max_dets=max_detections(model))
    metrics["num_images"] = len(dataset)
    metrics["num_detections"] = sum(len(d["scores"]) for d in detections)
    return metrics
