"""Cityscapes fine annotations (Cordts et al., CVPR 2016) as distributed: semantic segmentation in the 19
train ids, and instance segmentation of the 8 instance classes (Mask R-CNN, He et al. 2017, appendix A).

Layout under DATA/cityscapes/ (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpacked as they
come): leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png / _gtFine_instanceIds.png; splits train
(2975), val (500), test (1525, without labels).

Semantic: the label ids 0..33 of cityscapesScripts' labels.py mapped to the train ids 0..18, every other id
to 255 (ignored), as the benchmark scores them. Instances: in _instanceIds.png a pixel of an object holds
label id * 1000 + its number; each such value of the 8 classes (person, rider, car, truck, bus, train,
motorcycle, bicycle) is one instance. A value below 1000 of an instance class is a group of objects annotated
together ("car group"), which the benchmark ignores: such regions are left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from pixelwise.data.base import ImageMaskDataset, refuse_weight_map
from pixelwise.data.coco import instance_target
from pixelwise.data.io import DataError, read_image
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset

__all__ = ["Cityscapes", "CityscapesInstances", "TRAIN_IDS", "INSTANCE_IDS"]

# cityscapesScripts/helpers/labels.py: label id -> train id for the 19 evaluated classes
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
# The instance classes the benchmark evaluates (hasInstances and not ignoreInEval): label id -> label 1..8
INSTANCE_IDS = {24: 1, 25: 2, 26: 3, 27: 4, 28: 5, 31: 6, 32: 7, 33: 8}


def _pairs(root: Path, split: str, kind: str) -> tuple[list[Path], list[Path]]:
    """(images, ground-truth files of `kind`) of a split, matched by name, each image's file checked."""
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            raise DataError(f"Cityscapes: {str(folder)!r} is not a folder; expected leftImg8bit/{split}/<city>/ and "
                            f"gtFine/{split}/<city>/ under {str(root)!r}")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"Cityscapes: no *_leftImg8bit.png in the city folders of {str(image_dir)!r}")
    truth = [gt_dir / p.parent.name / p.name.replace("_leftImg8bit.png", f"_gtFine_{kind}.png") for p in images]
    for image, gt in zip(images, truth):
        if not gt.is_file():
            raise DataError(f"Cityscapes: image {str(image)!r} has no annotation; expected {str(gt)!r}"
                            + (" (the test split has no public labels)" if split == "test" else ""))
    return images, truth


class Cityscapes(ImageMaskDataset):
    """Cityscapes as (image, {"mask": train ids 0..18, 255 ignored})."""

    num_classes = 19
    ignore_index = 255
    class_names = NAMES
    palette = PALETTE
    in_channels = 3
    label_note = "pixel values are Cityscapes train ids (0 = road ... 18 = bicycle)"

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        self.root_dir, self.split, self.transforms = Path(root_dir), split, transforms
        self.image_paths, self.mask_paths = _pairs(self.root_dir, split, "labelIds")
        self.names = [p.name.replace("_leftImg8bit.png", "") for p in self.image_paths]
        self.label_map = {i: TRAIN_IDS.get(i, 255) for i in range(256)}


class CityscapesInstances(torch.utils.data.Dataset):
    """Cityscapes' objects of the 8 instance classes as (image, target) in the CocoInstances format."""

    num_classes = 8
    class_names = ["__background__", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    category_ids = {k: label_id for label_id, k in INSTANCE_IDS.items()}  # label -> Cityscapes label id
    palette = None
    in_channels = 3

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        self.root_dir, self.split, self.transforms = Path(root_dir), split, transforms
        self.image_paths, self.instance_paths = _pairs(self.root_dir, split, "instanceIds")
        self.names = [p.name.replace("_leftImg8bit.png", "") for p in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=3)
        path = self.instance_paths[i]
        try:
            with Image.open(path) as im:
                ids = np.asarray(im, dtype=np.int64)
        except OSError as e:
            raise DataError(f"Cityscapes: {str(path)!r} cannot be read: {e}") from None
        h, w = image.shape[-2:]
        if ids.shape != (h, w):
            raise DataError(f"Cityscapes: {str(path)!r} is {ids.shape[0]} x {ids.shape[1]} but its image is {h} x {w}")
        values = [v for v in np.unique(ids).tolist() if v >= 1000 and v // 1000 in INSTANCE_IDS]
        masks = np.stack([ids == v for v in values]).astype(np.uint8) if values else np.zeros((0, h, w), np.uint8)
        target = instance_target(masks, [INSTANCE_IDS[v // 1000] for v in values], i, [i * 100_000 + v for v in values])
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


@register_dataset("cityscapes", task="semantic", splits=("train", "val"), meta=class_meta(Cityscapes))
def build_cityscapes(data_cfg, role: str, spec: str) -> Cityscapes:
    refuse_weight_map(data_cfg, "has 19 classes")
    return Cityscapes(dataset_dir(data_cfg), split=spec)


@register_dataset("cityscapes_instances", task="instance", splits=("train", "val"),
                  meta=class_meta(CityscapesInstances, ignore_index=None))
def build_cityscapes_instances(data_cfg, role: str, spec: str) -> CityscapesInstances:
    return CityscapesInstances(dataset_dir(data_cfg), split=spec)
