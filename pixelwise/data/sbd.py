"""SBD, the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011), in its own MATLAB files: FCN's training
set (Long et al. 2015, section 4: SBD train, 8498 images, validated on VOC 2011's seg11valid).

Layout under DATA/sbd/ (benchmark.tgz unpacked: its benchmark_RELEASE/dataset/ folder is found as it comes):
img/<id>.jpg, cls/<id>.mat (GTcls.Segmentation: HxW class indices 0..20, no void), inst/<id>.mat
(GTinst.Segmentation: instance ids 1..n, GTinst.Categories: the class of each), train.txt (8498 ids) and
val.txt (2857). `sbd` is the semantic form (VOC's 21 classes), `sbd_instances` the instance form (VOC's 20
object classes). The .mat files are read with scipy.io.loadmat (MATLAB 5 files: no code runs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from pixelwise.data.base import ImageMaskDataset, refuse_weight_map
from pixelwise.data.coco import instance_target
from pixelwise.data.io import DataError, read_image
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.data.voc import VOCSegmentation, read_sbd, sbd_release

__all__ = ["SBD", "SBDInstances"]


def _ids(root: Path, split: str, folder: str) -> list[str]:
    listed = root / f"{split}.txt"
    if not listed.is_file():
        present = sorted(p.stem for p in root.glob("*.txt"))
        raise DataError(f"SBD: no list {str(listed)!r} (lists present: {present or 'none'}); expected train.txt and "
                        f"val.txt beside img/ and {folder}/")
    ids = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    for i in ids:
        for path in (root / "img" / f"{i}.jpg", root / folder / f"{i}.mat"):
            if not path.is_file():
                raise DataError(f"SBD: id {i!r} of {str(listed)!r} has no file {str(path)!r}")
    return ids


class SBD(ImageMaskDataset):
    """SBD's class labels as (image, {"mask": 0..20}), VOC's classes."""

    num_classes, ignore_index = 21, 255
    class_names, palette, in_channels = VOCSegmentation.class_names, VOCSegmentation.palette, 3

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        self.root_dir = sbd_release(Path(root_dir))
        self.names = _ids(self.root_dir, split, "cls")
        self.image_paths = [self.root_dir / "img" / f"{i}.jpg" for i in self.names]
        self.mask_paths = [self.root_dir / "cls" / f"{i}.mat" for i in self.names]
        self.split, self.transforms = split, transforms

    def read_mask(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        return torch.from_numpy(read_sbd(self.mask_paths[i], "GTcls", size=size)[0])


class SBDInstances(torch.utils.data.Dataset):
    """SBD's objects as (image, target) in the CocoInstances format, VOC's 20 object classes."""

    num_classes = 20
    class_names = ["__background__", *VOCSegmentation.class_names[1:]]
    category_ids = {k: k for k in range(1, 21)}
    palette, in_channels = None, 3

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        self.root_dir = sbd_release(Path(root_dir))
        self.names = _ids(self.root_dir, split, "inst")
        self.image_paths = [self.root_dir / "img" / f"{i}.jpg" for i in self.names]
        self.split, self.transforms = split, transforms

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=3, grey_to_rgb=True)
        h, w = image.shape[-2:]
        ids, categories = read_sbd(self.root_dir / "inst" / f"{self.names[i]}.mat", "GTinst", size=(h, w))
        present = [k for k in range(1, len(categories) + 1) if (ids == k).any()]
        masks = np.stack([ids == k for k in present]).astype(np.uint8) if present else np.zeros((0, h, w), np.uint8)
        target = instance_target(masks, [int(categories[k - 1]) for k in present], i, [i * 1000 + k for k in present])
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


@register_dataset("sbd", task="semantic", splits=("train", "val"), meta=class_meta(SBD))
def build_sbd(data_cfg, role: str, spec: str) -> SBD:
    refuse_weight_map(data_cfg, "has 21 classes")
    return SBD(dataset_dir(data_cfg), split=spec)


@register_dataset("sbd_instances", task="instance", splits=("train", "val"),
                  meta=class_meta(SBDInstances, ignore_index=None))
def build_sbd_instances(data_cfg, role: str, spec: str) -> SBDInstances:
    return SBDInstances(dataset_dir(data_cfg), split=spec)
