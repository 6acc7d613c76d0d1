"""PASCAL VOC 2012 segmentation (the FCN benchmark), optionally with SBD's extra training labels.

Layout under root_dir (VOCdevkit/VOC2012; a root_dir holding VOCdevkit/VOC2012 or VOC2012, as the official
VOCtrainval_11-May-2012.tar unpacks, is read there):
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png        palette PNGs: the palette INDEX is the class (0..20, 255 = void);
                                    the colours are only the VOC colour map and are never read
  ImageSets/Segmentation/<split>.txt   one id per line (train, val, trainval)

SBD extra labels (Hariharan et al. 2011; FCN section 4 trains on SBD's 8498 train images): `sbd_root`
is SBD's own release (cls/<id>.mat, GTcls.Segmentation, and its train.txt / val.txt, or the
benchmark_RELEASE/dataset/ folder benchmark.tgz unpacks to), or a folder holding
  SegmentationClassAug/<id>.png     8-bit class-index PNGs (mode L or P), the usual conversion of SBD's
                                    cls/<id>.mat (GTcls.Segmentation), as distributed with DeepLab
  <split>.txt                       optional lists, e.g. train_aug.txt (10582 ids: VOC train + SBD
                                    minus VOC val) or SBD's train.txt; a line is an id or DeepLab's
                                    "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
With `sbd_root` the split's list is taken from sbd_root/<split>.txt when it exists, else from
ImageSets/Segmentation; each id's mask is VOC's own SegmentationClass PNG when there is one (the official
labels, with void borders), else SegmentationClassAug/<id>.png; images always come from JPEGImages
(VOC 2012's JPEGImages holds every SBD image). FCN validates on a VOC val subset disjoint from SBD train
(seg11valid); give it as a list file and use it without `sbd_root`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch


from pixelwise.data.folder import default_palette
from pixelwise.data.base import ImageMaskDataset, configure
from pixelwise.data.paths import dataset_dir, resolve_root
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.data.io import DataError, read_mat

__all__ = ["VOCSegmentation", "read_sbd", "sbd_release"]


def _read_list(path: Path) -> list[str]:
    """Ids from a split list: one per line, or the first path of a line (its file name without suffix)."""
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOCSegmentation: split list {str(path)!r} is empty; expected one image id per line")
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise DataError(f"VOCSegmentation: split list {str(path)!r} names {twice[:5]} twice; expected each id once")
    return ids


def read_sbd(path: Path, struct: str, num_classes: int = 21,
             size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(Segmentation, Categories or None) of an SBD .mat file (struct GTcls or GTinst), checked."""
    data = read_mat(path, struct, "SBD", squeeze_me=True, struct_as_record=False)
    if not hasattr(data, "Segmentation"):
        raise DataError(f"SBD file {str(path)!r}: {struct} has no Segmentation field; expected SBD's cls/ or inst/ file")
    segmentation = np.asarray(data.Segmentation, dtype=np.int64)
    if segmentation.ndim != 2:
        raise DataError(f"SBD file {str(path)!r}: {struct}.Segmentation has shape {segmentation.shape}; expected H x W")
    if size is not None and segmentation.shape != tuple(size):
        raise DataError(f"SBD file {str(path)!r} is {segmentation.shape[0]} x {segmentation.shape[1]} but its image is "
                        f"{size[0]} x {size[1]}; expected the same size")
    categories = None
    if struct == "GTcls":
        bad = np.unique(segmentation[(segmentation < 0) | (segmentation >= num_classes)])
        if bad.size:
            raise DataError(f"SBD file {str(path)!r} has class values {bad.tolist()[:10]} outside [0, {num_classes})")
    else:
        categories = np.atleast_1d(np.asarray(data.Categories, dtype=np.int64))
        if segmentation.max(initial=0) > len(categories) or not all(1 <= c < num_classes for c in categories):
            raise DataError(f"SBD file {str(path)!r}: instance ids up to {segmentation.max(initial=0)} with "
                            f"{len(categories)} categories {categories.tolist()[:10]}; expected one category 1..20 "
                            "per instance id")
    return segmentation, categories


def sbd_release(root_dir: Path) -> Path:
    """SBD's dataset folder: root_dir, or the benchmark_RELEASE/dataset/ (or dataset/) in it."""
    for unpacked in ("benchmark_RELEASE/dataset", "dataset"):  # benchmark.tgz unpacked here as it comes
        if not (root_dir / "img").is_dir() and (root_dir / unpacked / "img").is_dir():
            return root_dir / unpacked
    return root_dir


class VOCSegmentation(ImageMaskDataset):
    """PASCAL VOC 2012 segmentation as (image, target).

    image: tv_tensors.Image float32 (3, H, W) in [0, 1];
    target: {"mask": tv_tensors.Mask int64 (H, W)} with values 0..20 and 255 = void (ignored).

    split: a list name under ImageSets/Segmentation (or under sbd_root, see the module docstring);
    "all", when no all.txt list exists, is every id with a SegmentationClass PNG (and, with sbd_root,
    every SegmentationClassAug PNG), sorted.
    """

    num_classes = 21
    ignore_index = 255
    class_names = [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    ]
    palette = default_palette(21)
    in_channels = 3

    def __init__(
        self,
        root_dir: str | Path,
        *,
        split: str,
        sbd_root: str | Path | None = None,
        transforms: Callable | None = None,
    ) -> None:
        self.root_dir = Path(root_dir)
        for unpacked in ("VOCdevkit/VOC2012", "VOC2012"):  # the official VOCtrainval tar unpacked here as it comes
            if not (self.root_dir / "JPEGImages").is_dir() and (self.root_dir / unpacked / "JPEGImages").is_dir():
                self.root_dir = self.root_dir / unpacked
        self.sbd_root = Path(sbd_root) if sbd_root is not None else None
        image_dir, mask_dir = self.root_dir / "JPEGImages", self.root_dir / "SegmentationClass"
        list_dir = self.root_dir / "ImageSets" / "Segmentation"
        if not image_dir.is_dir():
            raise DataError(
                f"VOCSegmentation: {str(image_dir)!r} is not a folder; expected JPEGImages/, SegmentationClass/"
                f" and ImageSets/Segmentation/ under {str(self.root_dir)!r} (the VOC2012 folder of VOCdevkit)"
            )
        aug_dir, suffix = None, ".png"
        list_dirs = [list_dir]
        if self.sbd_root is not None:
            aug_dir, lists_at = self.sbd_root / "SegmentationClassAug", self.sbd_root
            if not aug_dir.is_dir() and (sbd_release(self.sbd_root) / "cls").is_dir():  # SBD's own release: .mat files
                lists_at = sbd_release(self.sbd_root)
                aug_dir, suffix = lists_at / "cls", ".mat"
            if not aug_dir.is_dir():
                raise DataError(
                    f"VOCSegmentation: sbd_root {str(self.sbd_root)!r} has neither SegmentationClassAug/ (class-index "
                    "PNGs) nor SBD's cls/ (its .mat files, or benchmark_RELEASE/dataset/cls/ as benchmark.tgz unpacks)"
                )
            list_dirs.insert(0, lists_at)

        lists = [d / f"{split}.txt" for d in list_dirs]
        found = next((p for p in lists if p.is_file()), None)
        if found is not None:
            ids = _read_list(found)
        elif split == "all":
            stems = {p.stem for p in mask_dir.glob("*.png")}
            if aug_dir is not None:
                stems |= {p.stem for p in aug_dir.glob(f"*{suffix}")}
            ids = sorted(stems)
            if not ids:
                raise DataError(f"VOCSegmentation: split 'all' but no PNG masks in {str(mask_dir)!r}")
        else:
            present = sorted({p.stem for d in list_dirs if d.is_dir() for p in d.glob("*.txt")})
            raise DataError(
                f"VOCSegmentation: no list for split {split!r}: looked for {', '.join(repr(str(p)) for p in lists)}"
                f" (lists present: {present or 'none'}; split 'all' uses every SegmentationClass PNG)"
            )

        image_paths = [image_dir / f"{i}.jpg" for i in ids]
        mask_paths = []
        for i in ids:
            mask = mask_dir / f"{i}.png"
            if aug_dir is not None and not mask.is_file():
                mask = aug_dir / f"{i}{suffix}"
            mask_paths.append(mask)
        where = f" in {str(found)!r}" if found is not None else ""
        for what, paths in (("image", image_paths), ("mask", mask_paths)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                also = f" (nor in {str(aug_dir)!r})" if what == "mask" and aug_dir is not None else ""
                raise DataError(
                    f"VOCSegmentation: {len(missing)} of {len(ids)} ids{where} have no {what} file;"
                    f" first missing: {str(missing[0])!r}{also}"
                )
        self.split = split
        self.names = ids
        self.image_paths = image_paths
        self.mask_paths = mask_paths
        self.transforms = transforms

    def read_mask(self, i: int, size: tuple[int, int] | None = None):
        if self.mask_paths[i].suffix == ".mat":  # SBD's GTcls, read from its own release
            mask = torch.from_numpy(read_sbd(self.mask_paths[i], "GTcls", size=size)[0])
            if self.label_map:
                mask = mask.apply_(lambda v: self.label_map.get(v, v))
            return mask
        return super().read_mask(i, size)

    def __repr__(self) -> str:
        sbd = f", sbd_root={str(self.sbd_root)!r}" if self.sbd_root is not None else ""
        return f"VOCSegmentation(root_dir={str(self.root_dir)!r}, split={self.split!r}{sbd}, images={len(self)})"


@register_dataset("voc", task="semantic", splits=("train", "val"), meta=class_meta(VOCSegmentation),
                  reads=("label_map", "sbd_root"))
def build_voc(data_cfg, role: str, spec: str) -> VOCSegmentation:
    # SBD's extra labels augment training only; a relative sbd_root is under the data root, like data.path.
    sbd_root = data_cfg.sbd_root if role == "train" else None
    if sbd_root is not None:
        sbd_root = resolve_root(data_cfg.root) / Path(sbd_root).expanduser()
    return configure(VOCSegmentation(dataset_dir(data_cfg), split=spec, sbd_root=sbd_root), data_cfg, role)
