"""SIFT Flow (Liu, Yuen, Torralba, CVPR 2009 / TPAMI 2011), FCN's two-task data set (Long et al. 2015, section 5,
Table 5): 2,688 images of 256 x 256 with 33 semantic classes and 3 geometric classes (sky, horizontal,
vertical), split into 2,488 training and 200 test images; FCN trains one two-headed net for both tasks.

Layout under DATA/siftflow/ (SiftFlowDataset.zip unpacked, as FCN's data/sift-flow/ has it):
Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg, SemanticLabels/<same folder>/<id>.mat and
GeoLabels/<same folder>/<id>.mat (variable S: 0 = unlabelled, then the classes from 1; GeoLabels may hold -1 for
unlabelled), and the split lists <split>.txt (FCN's trainval.txt and test.txt: one id per line).

Targets: {"mask": 0..32 (255 unlabelled), "geo": 0..2 (255 unlabelled)}, as FCN's siftflow_layers.py makes
them (labels minus 1). A model with `model.args.extra_heads: {geo: 3}` learns and is scored on both (metrics
geo_pixel_acc, geo_mean_acc, geo_miou, geo_fwiou); a one-headed model uses the semantic labels only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from pixelwise.data.base import refuse_weight_map
from pixelwise.data.folder import default_palette
from pixelwise.data.io import DataError, read_mat, read_image
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset

__all__ = ["SiftFlow", "GEO_METRICS"]

FOLDER = "spatial_envelope_256x256_static_8outdoorcategories"
NAMES = ["awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert",
         "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock",
         "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window"]
GEO_NAMES = ["sky", "horizontal", "vertical"]
GEO_METRICS = ("geo_pixel_acc", "geo_mean_acc", "geo_miou", "geo_fwiou")


def _labels(path: Path, classes: int) -> np.ndarray:
    """A .mat label file's S minus 1: 0..classes-1, unlabelled (0 or -1 in the file) -> 255."""
    s = np.asarray(read_mat(path, "S", "SIFT Flow"), dtype=np.int64)
    if s.max(initial=0) > classes or s.min(initial=0) < -1:
        raise DataError(f"SIFT Flow file {str(path)!r} has values {s.min()}..{s.max()}; expected 0 (unlabelled) and "
                        f"the classes 1..{classes}")
    return np.where(s <= 0, 255, s - 1)


class SiftFlow(torch.utils.data.Dataset):
    """SIFT Flow as (image, {"mask": semantic, "geo": geometric})."""

    num_classes = 33
    ignore_index = 255
    class_names = NAMES
    palette = default_palette(33)
    in_channels = 3
    extra_targets = {"geo": GEO_NAMES}  # more label maps than "mask", for models with extra heads
    metrics = GEO_METRICS

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        self.root_dir, self.split, self.transforms = Path(root_dir), split, transforms
        listed = self.root_dir / f"{split}.txt"
        if not listed.is_file():
            present = sorted(p.stem for p in self.root_dir.glob("*.txt"))
            raise DataError(f"SIFT Flow: no list {str(listed)!r} (lists present: {present or 'none'}); expected FCN's "
                            "trainval.txt and test.txt (one image id per line)")
        self.names = [Path(line.split()[0]).stem for line in listed.read_text().splitlines() if line.strip()]
        self.image_paths = [self.root_dir / "Images" / FOLDER / f"{i}.jpg" for i in self.names]
        self.mask_paths = [self.root_dir / "SemanticLabels" / FOLDER / f"{i}.mat" for i in self.names]
        self.geo_paths = [self.root_dir / "GeoLabels" / FOLDER / f"{i}.mat" for i in self.names]
        for paths in (self.image_paths, self.mask_paths, self.geo_paths):
            absent = [p for p in paths if not p.is_file()]
            if absent:
                raise DataError(f"SIFT Flow: {len(absent)} of the {len(paths)} ids of {str(listed)!r} have no file; "
                                f"first: {str(absent[0])!r}")

    def __len__(self) -> int:
        return len(self.names)

    def read_mask(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_labels(self.mask_paths[i], 33))

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=3, grey_to_rgb=True)
        mask, geo = self.read_mask(i), torch.from_numpy(_labels(self.geo_paths[i], 3))
        for what, m in (("semantic", mask), ("geometric", geo)):
            if tuple(m.shape) != tuple(image.shape[-2:]):
                raise DataError(f"SIFT Flow: the {what} labels of {self.names[i]!r} are {tuple(m.shape)}, the image "
                                f"{tuple(image.shape[-2:])}")
        target = {"mask": tv_tensors.Mask(mask), "geo": tv_tensors.Mask(geo)}
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


@register_dataset("siftflow", task="semantic", splits=("trainval", "test"), metrics=GEO_METRICS,
                  meta=class_meta(SiftFlow, extra_targets={"geo": GEO_NAMES}))
def build_siftflow(data_cfg, role: str, spec: str) -> SiftFlow:
    refuse_weight_map(data_cfg, "has 33 classes")
    return SiftFlow(dataset_dir(data_cfg), split=spec)
