"""ISBI 2012 cells as instances: each 4-connected region of cell interior (label 255) is one "cell".

The membrane (label 0) is background. Regions touching the image border are kept. `to_coco` turns
any dataset with this target format into a COCO instances dict for `pixelwise.metrics.coco_evaluate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data.io import DataError, read_image, read_mask
from pixelwise.data.isbi2012 import ISBI2012, parse_indices, split_key
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.errors import ConfigError

__all__ = ["ISBIInstances", "median_cell_area", "to_coco"]

ANN_ID_STRIDE = 1_000_000  # annotation id = slice index * ANN_ID_STRIDE + region number
SIZE_CLASS_NAMES = ("__background__", "small", "large")


class ISBIInstances(torch.utils.data.Dataset):
    """ISBI 2012 train slices as (image, target) for instance segmentation (one class, "cell").

    image: tv_tensors.Image float32 (channels, H, W) in [0, 1]; channels=3 repeats the gray channel
    (for ImageNet backbones).
    target: as CocoInstances: boxes (tv_tensors.BoundingBoxes XYXY float32 (N, 4), tight around each
    region, x2 / y2 one past the last pixel as in COCO), labels int64 (N,) all 1, masks (tv_tensors.Mask
    uint8 (N, H, W), disjoint), iscrowd int64 (N,) zeros, area float32 (N,) pixel counts, image_id (the
    slice index), ann_ids int64 (N,) = slice index * 1e6 + region number (raster-scan order).

    Args:
        indices: slice indices, or a spec such as "0-24" (see parse_indices); default all.
        min_area: leave out regions of fewer pixels (0 keeps all).
        size_threshold: two classes instead of one: "small" (label 1, area < size_threshold pixels) and
            "large" (label 2); `median_cell_area` gives the threshold that splits a set of slices in half.
    """

    num_classes = 1  # object classes, as the model's num_classes (labels are 1..K; 0 is background)
    class_names = ["__background__", "cell"]
    palette = None
    category_ids = {1: 1}

    def __init__(
        self,
        root_dir: str | Path,
        *,
        indices: str | int | Sequence[int] | None = None,
        channels: int = 1,
        min_area: int = 0,
        transforms: Callable | None = None,
        size_threshold: float | None = None,
    ) -> None:
        if size_threshold is not None and not size_threshold > 0:
            raise ValueError(f"ISBIInstances: size_threshold={size_threshold!r}; expected a pixel area > 0")
        if channels not in (1, 3):
            raise ValueError(f"ISBIInstances: channels={channels!r}; expected 1, or 3 to repeat the gray channel")
        if min_area < 0:
            raise ValueError(f"ISBIInstances: min_area={min_area!r}; expected a pixel count >= 0")
        if indices is not None:
            indices = parse_indices(indices)
        slices = ISBI2012(root_dir, indices=indices, split="train")  # finds and checks the files
        self.root_dir = slices.root_dir
        self.indices: list[int] = slices.indices
        self.image_paths: list[Path] = slices.image_paths
        self.label_paths: list[Path] = slices.label_paths
        self.names: list[str] = slices.names
        self.in_channels = channels
        self.min_area = min_area
        self.transforms = transforms
        self.size_threshold = size_threshold
        if size_threshold is not None:
            self.num_classes, self.class_names, self.category_ids = 2, list(SIZE_CLASS_NAMES), {1: 1, 2: 2}

    def __len__(self) -> int:
        return len(self.image_paths)

    def instances(self, i: int) -> np.ndarray:
        """Slice i's cells: (H, W) int32, 0 on membrane, 1..n per region (raster order, before min_area)."""
        path = self.label_paths[i]
        label = read_mask(path, num_classes=256, ignore_index=None, image_path=self.image_paths[i]).numpy()
        values = np.unique(label)
        if not set(values.tolist()) <= {0, 255}:
            raise DataError(
                f"ISBI 2012 label {str(path)!r} has values {values.tolist()}; expected only 0 (membrane) and"
                " 255 (cell interior)"
            )
        regions, _ = ndimage.label(label == 255)  # default structure = 4-connectivity
        return regions

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=1)
        regions = self.instances(i)
        h, w = regions.shape
        if image.shape[-2:] != (h, w):
            raise DataError(
                f"ISBI 2012 label {str(self.label_paths[i])!r} is {h}x{w} but image {str(self.image_paths[i])!r}"
                f" is {tuple(image.shape[-2:])}; expected the same size"
            )
        areas = np.bincount(regions.ravel(), minlength=regions.max() + 1)
        ids, boxes, masks = [], [], []
        for k, sl in enumerate(ndimage.find_objects(regions), start=1):
            if sl is None or areas[k] < self.min_area:
                continue
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[sl] = regions[sl] == k
            ids.append(k)
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
            masks.append(mask)
        n = len(ids)
        if self.in_channels == 3:
            image = image.repeat(3, 1, 1)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w),
            ),
            "labels": (torch.ones(n, dtype=torch.int64) if self.size_threshold is None
                       else 1 + torch.as_tensor(areas[ids] >= self.size_threshold, dtype=torch.int64).reshape(-1)),
            "masks": tv_tensors.Mask(torch.from_numpy(np.stack(masks)) if n else torch.zeros(0, h, w, dtype=torch.uint8)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "area": torch.tensor(areas[ids], dtype=torch.float32).reshape(-1),
            "image_id": self.indices[i],
            "ann_ids": torch.tensor([self.indices[i] * ANN_ID_STRIDE + k for k in ids], dtype=torch.int64),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"ISBIInstances(root_dir={str(self.root_dir)!r}, slices={len(self)}, min_area={self.min_area})"


def to_coco(dataset: torch.utils.data.Dataset) -> dict:
    """A COCO instances dict (images, annotations with compressed RLE segmentation, categories) of `dataset`.

    `dataset` returns targets in the CocoInstances format and has `category_ids` (label -> COCO id) and
    `class_names`; it is read as it is, so its transforms (if any) shape the ground truth.
    """
    names = getattr(dataset, "names", None)
    images, annotations = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        h, w = image.shape[-2:]
        image_id = int(target["image_id"])
        images.append({"id": image_id, "file_name": names[i] if names else str(image_id), "height": h, "width": w})
        masks = target["masks"].numpy()
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)) if len(masks) else []
        boxes = target["boxes"].as_subclass(torch.Tensor).tolist()
        for j, rle in enumerate(rles):
            x1, y1, x2, y2 = boxes[j]
            annotations.append({
                "id": int(target["ann_ids"][j]),
                "image_id": image_id,
                "category_id": dataset.category_ids[int(target["labels"][j])],
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": float(target["area"][j]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": int(target["iscrowd"][j]),
            })
    categories = [{"id": cid, "name": dataset.class_names[k]} for k, cid in sorted(dataset.category_ids.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


@register_dataset("isbi_instances", task="instance", splits=("0-24", "25-29"),
                  meta=class_meta(ISBIInstances, in_channels=3, ignore_index=None))
def build_isbi_instances(data_cfg, role: str, spec: str) -> ISBIInstances:
    try:
        indices = parse_indices(spec)
    except ValueError as e:
        raise ConfigError(f"{split_key(role)}: {e}") from None
    return ISBIInstances(dataset_dir(data_cfg), indices=indices, channels=3)  # 3 channels: the backbones take RGB


class _BySize:  # meta of the two-class variant
    num_classes, class_names, palette = 2, SIZE_CLASS_NAMES, None


def median_cell_area(dataset: ISBIInstances) -> float:
    """The median area (pixels) of the cells of `dataset`'s slices, counted as its targets count them."""
    areas = []
    for i in range(len(dataset)):
        regions = dataset.instances(i)
        counts = np.bincount(regions.ravel())[1:]
        areas += counts[counts >= max(dataset.min_area, 1)].tolist()
    if not areas:
        raise DataError(f"ISBI 2012 slices {dataset.indices} hold no cells to take a median area of")
    return float(np.median(areas))


@register_dataset("isbi_instances_by_size", task="instance", splits=("0-24", "25-29"),
                  meta=class_meta(_BySize, in_channels=3, ignore_index=None))
def build_isbi_instances_by_size(data_cfg, role: str, spec: str) -> ISBIInstances:
    """ISBI cells in two classes, "small" and "large", split at the median cell area of the training slices
    (data.train_split, whichever split is built), so that there are classes for masks to compete over
    (Mask R-CNN Table 2b/2c's sigmoid vs softmax and class-specific vs class-agnostic masks)."""
    try:
        indices, train = parse_indices(spec), parse_indices(data_cfg.train_split)
    except ValueError as e:
        raise ConfigError(f"{split_key(role)}: {e}") from None
    threshold = median_cell_area(ISBIInstances(dataset_dir(data_cfg), indices=train))
    return ISBIInstances(dataset_dir(data_cfg), indices=indices, channels=3, size_threshold=threshold)
