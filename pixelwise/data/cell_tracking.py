"""The ISBI cell tracking challenge's PhC-C2DH-U373 and DIC-C2DH-HeLa, U-Net's second and third data sets
(Ronneberger et al. 2015, section 4, Table 2: IoU 0.9203 and 0.7756), in the challenge's folder layout.

Layout under DATA/<PhC-C2DH-U373 | DIC-C2DH-HeLa>/ (the training archive unpacked as it comes): sequences
01/ and 02/ of frames tNNN.tif (8- or 16-bit), and 01_GT/SEG/man_segNNN.tif, the reference segmentation of
some frames: 16-bit instance labels (0 background, one id per cell). A sample is a frame with a SEG file.
Splits are sequences: "01", "02" or "01+02" (default: train on 01, validate on 02).

Targets are two classes, 0 background and 1 cell. As in U-Net (section 3, Fig. 3), touching cells are kept
apart: a cell pixel next to a pixel of another cell (8-neighbourhood) is background, and with
data.weight_map the weight map's border term comes from the SEG instances themselves (eq. 2), not from
connected regions. 8-bit frames are scaled by 1/255; 16-bit frames by their own minimum and maximum.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data.io import DataError
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.ops.weight_map import unet_weight_map

__all__ = ["CellTracking", "separate_touching"]


def _read_tiff(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{what} {str(path)!r} has {im.n_frames} pages; expected one 2-D frame")
            array = np.asarray(im)
    except OSError as e:
        raise DataError(f"{what} {str(path)!r} cannot be read: {e}") from None
    if array.ndim != 2:
        raise DataError(f"{what} {str(path)!r} has shape {array.shape}; expected a 2-D grey frame")
    return array


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Cell (1) / background (0) classes, with every cell pixel that touches another cell (8-neighbourhood) set
    to background: the separation U-Net learns between touching cells."""
    biggest = ndimage.maximum_filter(instances, size=3)
    smallest = ndimage.minimum_filter(np.where(instances > 0, instances, np.iinfo(np.int64).max), size=3)
    touching = (instances > 0) & ((biggest != instances) | (smallest != instances))
    return ((instances > 0) & ~touching).astype(np.int64)


class CellTracking(torch.utils.data.Dataset):
    """Annotated frames of one cell tracking data set as (image (1, H, W), {"mask", optional "weight"})."""

    num_classes = 2
    ignore_index = None
    class_names = ["background", "cell"]
    palette = [(0, 0, 0), (255, 255, 255)]
    in_channels = 1
    label_note = "pixel values are 0 = background, 1 = cell (touching cells separated by background)"

    def __init__(self, root_dir: str | Path, *, split: str, weight_map: tuple[float, float, bool] | None = None,
                 transforms=None) -> None:
        self.root_dir, self.weight_map, self.transforms = Path(root_dir), weight_map, transforms
        self.image_paths, self.mask_paths = [], []
        for seq in split.split("+"):
            if not seq.isdigit():
                raise DataError(f"cell tracking: split {split!r}; expected sequences such as 01, 02 or 01+02")
            frames, seg = self.root_dir / seq, self.root_dir / f"{seq}_GT" / "SEG"
            for folder in (frames, seg):
                if not folder.is_dir():
                    raise DataError(f"cell tracking: {str(folder)!r} is not a folder; expected {seq}/tNNN.tif and "
                                    f"{seq}_GT/SEG/man_segNNN.tif under {str(self.root_dir)!r}")
            for mask in sorted(seg.glob("man_seg*.tif")):
                image = frames / f"t{mask.stem[len('man_seg'):]}.tif"
                if not image.is_file():
                    raise DataError(f"cell tracking: {str(mask)!r} has no frame; expected {str(image)!r}")
                self.image_paths.append(image)
                self.mask_paths.append(mask)
        if not self.image_paths:
            raise DataError(f"cell tracking: no man_seg*.tif in the SEG folders of {split!r} under "
                            f"{str(self.root_dir)!r}")
        self.names = [f"{p.parent.name}_{p.stem}" for p in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def instances(self, i: int) -> np.ndarray:
        seg = _read_tiff(self.mask_paths[i], "SEG file").astype(np.int64)
        if seg.min() < 0:
            raise DataError(f"SEG file {str(self.mask_paths[i])!r} has negative values; expected 0 and cell ids")
        return seg

    def read_mask(self, i: int) -> torch.Tensor:
        return torch.from_numpy(separate_touching(self.instances(i)))

    def read_frame(self, i: int) -> torch.Tensor:
        frame = _read_tiff(self.image_paths[i], "frame").astype(np.float32)
        if _read_dtype(self.image_paths[i]) == np.uint8:
            frame /= 255
        else:
            low, high = frame.min(), frame.max()
            frame = (frame - low) / max(high - low, 1e-6)
        return torch.from_numpy(frame)[None]

    def __getitem__(self, i: int):
        image, seg = self.read_frame(i), self.instances(i)
        if tuple(image.shape[-2:]) != seg.shape:
            raise DataError(f"SEG file {str(self.mask_paths[i])!r} is {seg.shape[0]} x {seg.shape[1]} but its frame "
                            f"{str(self.image_paths[i])!r} is {image.shape[-2]} x {image.shape[-1]}")
        mask = separate_touching(seg)
        target = {"mask": tv_tensors.Mask(torch.from_numpy(mask))}
        if self.weight_map is not None:
            w0, sigma, balance = self.weight_map
            weight = unet_weight_map(np.where(mask > 0, seg, 0), mask, num_classes=2, w0=w0, sigma=sigma,
                                     balance=balance)
            target["weight"] = tv_tensors.Mask(torch.from_numpy(weight))
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _read_dtype(path: Path):
    with Image.open(path) as im:
        return np.uint8 if im.mode in ("L", "P") else np.uint16


def _builder(folder: str):
    def build(data_cfg, role: str, spec: str) -> CellTracking:
        weight = (data_cfg.w0, data_cfg.sigma, data_cfg.class_balance) if data_cfg.weight_map and role == "train" \
            else None
        return CellTracking(dataset_dir(data_cfg), split=spec, weight_map=weight)
    build.__doc__ = f"{folder}: see pixelwise.data.cell_tracking"
    return build


for _name in ("PhC-C2DH-U373", "DIC-C2DH-HeLa"):
    register_dataset(_name.lower(), task="semantic", splits=("01", "02"), meta=class_meta(CellTracking))(
        _builder(_name))
