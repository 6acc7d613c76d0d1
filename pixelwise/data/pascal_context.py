"""PASCAL-Context (Mottaghi et al., CVPR 2014), FCN's 59-class task (Shelhamer, Long & Darrell, PAMI 2016): the
59 most frequent of its 459 classes, every other pixel background (class 0), 60 classes in all.

Layout under DATA/pascal_context/ (the release's trainval.tar.gz unpacked here, with its labels.txt and
59_labels.txt): trainval/<id>.mat (LabelMap: H x W ids of labels.txt's 459 classes, 0 = unlabelled),
labels.txt ("id: name", 459 lines) and 59_labels.txt ("k: name", the 59 classes FCN keeps); the images are
PASCAL VOC 2010's: JPEGImages/<id>.jpg in this folder, or VOCdevkit/VOC2010/JPEGImages under the data root.
Splits are VOC 2010's lists (FCN: 4998 train and 5105 val images): <split>.txt in this folder, or
VOCdevkit/VOC2010/ImageSets/Main/<split>.txt. As FCN's pascalcontext_layers.py does, a class of the 459 is
one of the 59 when its name, spaces removed, is the same; LabelMap's 0 and every other class are background.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixelwise.data.base import ImageMaskDataset, refuse_weight_map
from pixelwise.data.folder import default_palette
from pixelwise.data.io import DataError, read_mat
from pixelwise.data.paths import dataset_dir, resolve_root
from pixelwise.data.registry import register_dataset

__all__ = ["PascalContext", "read_label_names"]


def read_label_names(path: Path) -> list[str]:
    """The names of an "id: name" file, in order."""
    if not path.is_file():
        raise DataError(f"PASCAL-Context: {str(path)!r} does not exist; expected the release's labels.txt and "
                        "59_labels.txt beside trainval/")
    names = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            if ":" not in line:
                raise DataError(f"PASCAL-Context: {str(path)!r} line {n}: {line[:60]!r}; expected 'id: name'")
            names.append(line.split(":", 1)[1].strip())
    return names


class PascalContext(ImageMaskDataset):
    """PASCAL-Context as (image, {"mask": 0 background, 1..59 FCN's classes})."""

    num_classes = 60
    ignore_index = 255
    in_channels = 3
    palette = default_palette(60)
    label_note = "pixel values are 0 = background (the other 400 classes) and 1..59 = 59_labels.txt's classes"

    def __init__(self, root_dir: str | Path, *, split: str, voc_root: Path | None = None, transforms=None) -> None:
        self.root_dir, self.split, self.transforms = Path(root_dir), split, transforms
        names_459 = [n.replace(" ", "") for n in read_label_names(self.root_dir / "labels.txt")]
        names_59 = read_label_names(self.root_dir / "59_labels.txt")
        missing = [n for n in names_59 if n.replace(" ", "") not in names_459]
        if missing:
            raise DataError(f"PASCAL-Context: classes {missing[:5]} of 59_labels.txt are not in labels.txt")
        self.class_names = ["background", *names_59]
        self._lut = np.zeros(len(names_459) + 1, np.int64)  # 459-class id -> 0..59
        for k, name in enumerate(names_59, start=1):
            self._lut[names_459.index(name.replace(" ", "")) + 1] = k
        voc = voc_root / "VOCdevkit" / "VOC2010" if voc_root is not None else None
        lists = [self.root_dir / f"{split}.txt"] + ([voc / "ImageSets" / "Main" / f"{split}.txt"] if voc else [])
        listed = next((p for p in lists if p.is_file()), None)
        if listed is None:
            raise DataError(f"PASCAL-Context: no list for split {split!r}; looked for "
                            f"{', '.join(repr(str(p)) for p in lists)} (VOC 2010's train.txt / val.txt)")
        self.names = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
        image_dirs = [self.root_dir / "JPEGImages"] + ([voc / "JPEGImages"] if voc else [])
        image_dir = next((d for d in image_dirs if d.is_dir()), None)
        if image_dir is None:
            looked = ", ".join(repr(str(d)) for d in image_dirs)
            raise DataError(f"PASCAL-Context: no image folder; looked for {looked} (VOC 2010's JPEGImages)")
        self.image_paths = [image_dir / f"{i}.jpg" for i in self.names]
        self.mask_paths = [self.root_dir / "trainval" / f"{i}.mat" for i in self.names]
        for what, paths in (("image", self.image_paths), ("label", self.mask_paths)):
            absent = [p for p in paths if not p.is_file()]
            if absent:
                raise DataError(f"PASCAL-Context: {len(absent)} of the {len(paths)} ids of {str(listed)!r} have no "
                                f"{what} file; first: {str(absent[0])!r}")

    def read_mask(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        path = self.mask_paths[i]
        label = np.asarray(read_mat(path, "LabelMap", "PASCAL-Context"), dtype=np.int64)
        if size is not None and label.shape != tuple(size):
            raise DataError(f"PASCAL-Context file {str(path)!r} is {label.shape[0]} x {label.shape[1]} but its image "
                            f"is {size[0]} x {size[1]}")
        if label.min(initial=0) < 0 or label.max(initial=0) >= len(self._lut):
            raise DataError(f"PASCAL-Context file {str(path)!r} has label ids up to {label.max()}; labels.txt has "
                            f"{len(self._lut) - 1} classes")
        return torch.from_numpy(self._lut[label])


def _meta(data_cfg) -> dict:  # the class names are in the release's 59_labels.txt
    return {"num_classes": 60, "class_names": None, "palette": default_palette(60), "in_channels": 3,
            "ignore_index": 255, "label_note": PascalContext.label_note}


@register_dataset("pascal_context", task="semantic", splits=("train", "val"), meta=_meta)
def build_pascal_context(data_cfg, role: str, spec: str) -> PascalContext:
    refuse_weight_map(data_cfg, "has 60 classes")
    return PascalContext(dataset_dir(data_cfg), split=spec, voc_root=resolve_root(data_cfg.root))
