"""A dataset from a plain folder: <split>/images/*.{png,jpg,jpeg,tif} + <split>/masks/<stem>.png."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


from pixelwise.data.base import ImageMaskDataset, configure
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import register_dataset
from pixelwise.errors import ConfigError
from pixelwise.data.io import DataError

__all__ = ["FolderDataset", "default_palette", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour table (bit-interleaved class index): fixed, distinct for 256 classes."""
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


class FolderDataset(ImageMaskDataset):
    """Images with class-index PNG masks as (image, target).

    image: tv_tensors.Image float32 (in_channels, H, W) in [0, 1];
    target: {"mask": tv_tensors.Mask int64 (H, W)} with values in [0, num_classes) or ignore_index.
    """

    def __init__(
        self,
        root_dir: str | Path,
        *,
        split: str,
        num_classes: int,
        ignore_index: int = 255,
        in_channels: int = 3,
        transforms: Callable | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"FolderDataset: num_classes={num_classes}; expected >= 1")
        self.root_dir = Path(root_dir)
        image_dir = self.root_dir / split / "images"
        mask_dir = self.root_dir / split / "masks"
        if not image_dir.is_dir():
            splits = []
            if self.root_dir.is_dir():
                splits = sorted(p.name for p in self.root_dir.iterdir() if (p / "images").is_dir())
            raise DataError(
                f"FolderDataset: {str(image_dir)!r} is not a folder; expected {split}/images and {split}/masks"
                f" under {str(self.root_dir)!r} (splits found: {splits or 'none'})"
            )
        image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not image_paths:
            raise DataError(
                f"FolderDataset: no images in {str(image_dir)!r}; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
        stems: dict[str, Path] = {}
        for p in image_paths:
            if p.stem in stems:
                raise DataError(
                    f"FolderDataset: {str(stems[p.stem])!r} and {str(p)!r} share the name {p.stem!r};"
                    " expected one image per mask"
                )
            stems[p.stem] = p
        mask_paths = [mask_dir / f"{p.stem}.png" for p in image_paths]
        for image, mask in zip(image_paths, mask_paths):
            if not mask.is_file():
                found = " (a folder of that name is there)" if mask.is_dir() else ""
                raise DataError(f"FolderDataset: image {str(image)!r} has no mask; expected the PNG file "
                                f"{str(mask)!r}{found}")
        self.split = split
        self.image_paths = image_paths
        self.mask_paths = mask_paths
        self.names = [p.stem for p in image_paths]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.in_channels = in_channels
        self.class_names = [f"class{k}" for k in range(num_classes)]
        self.palette = default_palette(num_classes)
        self.transforms = transforms

    def __repr__(self) -> str:
        return (
            f"FolderDataset(root_dir={str(self.root_dir)!r}, split={self.split!r}, images={len(self)},"
            f" num_classes={self.num_classes})"
        )


def folder_meta(data_cfg) -> dict:
    k = data_cfg.num_classes or 2
    return {"num_classes": k, "class_names": [f"class{i}" for i in range(k)], "palette": default_palette(k),
            "in_channels": len(data_cfg.mean), "ignore_index": data_cfg.ignore_index, "label_note": None}


@register_dataset("folder", task="semantic", splits=("train", "val"), meta=folder_meta,
                  reads=("num_classes", "ignore_index", "label_map"))
def build_folder(data_cfg, role: str, spec: str) -> FolderDataset:
    """num_classes and ignore_index from data_cfg, the channel count from len(data_cfg.mean)."""
    if data_cfg.num_classes is None:
        raise ConfigError("data.dataset='folder' needs data.num_classes (the number of classes in the masks)")
    if len(data_cfg.mean) not in (1, 3):
        raise ConfigError(f"data.mean={data_cfg.mean}: the folder dataset reads 1 or 3 channels; expected 1 or 3 values")
    dataset = FolderDataset(dataset_dir(data_cfg), split=spec, num_classes=data_cfg.num_classes,
                            ignore_index=data_cfg.ignore_index, in_channels=len(data_cfg.mean))
    return configure(dataset, data_cfg, role)
