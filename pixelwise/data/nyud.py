"""NYUDv2 in the 40-class task of Gupta et al. (ECCV 2014), FCN's RGB-D data set (Long et al. 2015, section 5,
Table 4: 795 training and 654 test images; RGB, RGB-D early fusion and HHA).

Layout under DATA/nyud/ (Gupta et al.'s release, as FCN's data/nyud/ has it): data/images/img_<id>.png (RGB),
data/depth/img_<id>.png (16-bit depth in millimetres), segmentation/img_<id>.mat (variable segmentation: 0 void,
1..40 the classes), and the split lists train.txt, val.txt, test.txt (ids such as 5001).

Targets are 0..39 with void -> 255, as FCN's nyud_layers.py makes them (labels minus 1). Inputs follow
data.mean: three values read RGB; four values read RGB plus depth as a fourth channel (FCN's "RGB-D" early
fusion), the log of the depth in millimetres divided by log(10000), so 1 m is 0.75 and 10 m is 1.0 (FCN feeds
the log depth too). `nyud_hha` reads the release's HHA encoding of the depth (data/hha/img_<id>.png: horizontal
disparity, height above ground, angle with gravity, as three 8-bit channels) as the image instead, FCN's "HHA"
net; FCN's best, RGB-HHA, is the late fusion of an RGB and an HHA net (their scores summed), not one dataset.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from pixelwise.data.base import refuse_weight_map
from pixelwise.data.folder import default_palette
from pixelwise.data.io import DataError, read_mat, read_image
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import register_dataset

__all__ = ["NYUD"]

NAMES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
         "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
         "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
         "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
         "otherprop"]


class NYUD(torch.utils.data.Dataset):
    """NYUDv2 (40 classes) as (image (3 or 4, H, W), {"mask": 0..39, 255 void})."""

    num_classes = 40
    ignore_index = 255
    class_names = NAMES
    palette = default_palette(40)

    def __init__(self, root_dir: str | Path, *, split: str, depth: bool = False, hha: bool = False,
                 transforms=None) -> None:
        self.root_dir, self.split, self.depth, self.transforms = Path(root_dir), split, depth, transforms
        self.in_channels = 4 if depth else 3
        listed = self.root_dir / f"{split}.txt"
        if not listed.is_file():
            present = sorted(p.stem for p in self.root_dir.glob("*.txt"))
            raise DataError(f"NYUDv2: no list {str(listed)!r} (lists present: {present or 'none'}); expected train.txt, "
                            "val.txt and test.txt beside data/ and segmentation/")
        self.names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        self.image_paths = [self.root_dir / "data" / ("hha" if hha else "images") / f"img_{i}.png" for i in self.names]
        self.mask_paths = [self.root_dir / "segmentation" / f"img_{i}.mat" for i in self.names]
        self.depth_paths = [self.root_dir / "data" / "depth" / f"img_{i}.png" for i in self.names]
        for paths in (self.image_paths, self.mask_paths) + ((self.depth_paths,) if depth else ()):
            absent = [p for p in paths if not p.is_file()]
            if absent:
                raise DataError(f"NYUDv2: {len(absent)} of the {len(paths)} ids of {str(listed)!r} have no file; "
                                f"first: {str(absent[0])!r}")

    def __len__(self) -> int:
        return len(self.names)

    def read_mask(self, i: int) -> torch.Tensor:
        path = self.mask_paths[i]
        label = np.asarray(read_mat(path, "segmentation", "NYUDv2"), dtype=np.int64)
        if label.min(initial=0) < 0 or label.max(initial=0) > 40:
            raise DataError(f"NYUDv2 file {str(path)!r} has values {label.min()}..{label.max()}; expected 0 (void) and "
                            "the classes 1..40")
        return torch.from_numpy(np.where(label == 0, 255, label - 1))

    def read_depth(self, i: int) -> torch.Tensor:
        path = self.depth_paths[i]
        try:
            with Image.open(path) as im:
                depth = np.asarray(im, dtype=np.float32)
        except OSError as e:
            raise DataError(f"NYUDv2 depth {str(path)!r} cannot be read: {e}") from None
        if depth.ndim != 2:
            raise DataError(f"NYUDv2 depth {str(path)!r} has shape {depth.shape}; expected one channel of millimetres")
        return torch.from_numpy(np.log(np.maximum(depth, 1.0)) / math.log(10000.0))[None]

    def __getitem__(self, i: int):
        image, mask = read_image(self.image_paths[i], channels=3), self.read_mask(i)
        if self.depth:
            image = torch.cat([image, self.read_depth(i)])
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(f"NYUDv2: {str(self.mask_paths[i])!r} is {tuple(mask.shape)}, its image "
                            f"{tuple(image.shape[-2:])}")
        image, target = tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _meta(data_cfg) -> dict:
    return {"num_classes": 40, "class_names": NAMES, "palette": default_palette(40),
            "in_channels": 4 if len(data_cfg.mean) == 4 else 3, "ignore_index": 255, "label_note": None}


@register_dataset("nyud", task="semantic", splits=("train", "test"), meta=_meta)
def build_nyud(data_cfg, role: str, spec: str) -> NYUD:
    refuse_weight_map(data_cfg, "has 40 classes")
    if len(data_cfg.mean) not in (3, 4):
        raise DataError(f"NYUDv2: data.mean has {len(data_cfg.mean)} values; expected 3 (RGB) or 4 (RGB + depth)")
    return NYUD(dataset_dir(data_cfg), split=spec, depth=len(data_cfg.mean) == 4)


@register_dataset("nyud_hha", task="semantic", splits=("train", "test"), meta=_meta)
def build_nyud_hha(data_cfg, role: str, spec: str) -> NYUD:
    refuse_weight_map(data_cfg, "has 40 classes")
    if len(data_cfg.mean) != 3:
        raise DataError(f"NYUDv2 HHA: data.mean has {len(data_cfg.mean)} values; expected 3 (the HHA channels)")
    return NYUD(dataset_dir(data_cfg), split=spec, hha=True)
