"""ISBI 2012 EM segmentation challenge (neuronal membranes), the first benchmark of U-Net.

Layout: train/image/NN.png (8-bit grayscale), train/label/NN.png (0 = membrane, 255 = cell
interior), test/image/NN.png (no labels). Classes here: 0 = cell interior, 1 = membrane, so that
membrane is the positive class of binary metrics and thresholds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data.io import DataError, read_image, read_mask
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.errors import ConfigError
from pixelwise.metrics import ISBI_METRICS
from pixelwise.ops.weight_map import unet_weight_map

__all__ = ["ISBI2012", "parse_indices"]


def parse_indices(spec: str | int | Sequence[int]) -> list[int]:
    """Slice indices from a spec such as "0-24", "0,3,5-7" or "7" (ranges include both ends)."""
    if isinstance(spec, int):
        return [spec]
    if not isinstance(spec, str):
        return [int(i) for i in spec]
    indices: list[int] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(
                f"slice spec {spec!r}: cannot parse {part!r}; expected comma-separated indices or"
                " increasing ranges, for example '0-24' or '0,3,5-7'"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        indices.extend(range(lo, hi + 1))
    if len(set(indices)) != len(indices):
        raise ValueError(f"slice spec {spec!r} lists some indices twice")
    return indices


def _numbered_pngs(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise DataError(f"ISBI 2012: folder {str(folder)!r} does not exist; expected numbered PNGs such as 00.png")
    files = {int(p.stem): p for p in folder.glob("*.png") if p.stem.isdigit()}
    if not files:
        raise DataError(f"ISBI 2012: folder {str(folder)!r} has no numbered PNGs; expected 00.png, 01.png, ...")
    return files


class ISBI2012(torch.utils.data.Dataset):
    """ISBI 2012 slices as (image, target).

    image: tv_tensors.Image float32 (1, H, W) in [0, 1].
    target: {"mask": tv_tensors.Mask int64 (H, W)} (0 = cell, 1 = membrane), plus
    {"weight": tv_tensors.Mask float32 (H, W)} when `weight_map` (U-Net section 3, eq. 2, with cells
    = 4-connected interior regions; computed once per slice and cached). For split="test" the target
    is an empty dict (the challenge never released test labels).
    """

    num_classes = 2
    ignore_index = 255
    class_names = ["cell", "membrane"]
    palette = [(255, 255, 255), (0, 0, 0)]  # the challenge's convention: membranes black
    label_note = ("ISBI 2012's own label files store 0 = membrane and 255 = cell interior; these PNGs hold class "
                  "indices 0 = cell, 1 = membrane (drawn white and black by their palette). The challenge's encoding "
                  "is 255 * (png == 0).")
    in_channels = 1
    metrics = ISBI_METRICS  # the challenge scores its evaluation adds (pixelwise.metrics.isbi)

    def __init__(
        self,
        root_dir: str | Path,
        *,
        indices: Sequence[int] | None = None,
        split: str = "train",
        transforms: Callable | None = None,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        balance: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"ISBI2012: split={split!r}; expected 'train' (labelled slices) or 'test' (unlabelled)")
        if weight_map and split == "test":
            raise ValueError("ISBI2012: weight_map=True needs labels, but split='test' has none")
        self.root_dir = Path(root_dir)
        images = _numbered_pngs(self.root_dir / split / "image")
        labels = _numbered_pngs(self.root_dir / split / "label") if split == "train" else {}
        indices = sorted(images) if indices is None else list(indices)
        missing = [i for i in indices if i not in images or (split == "train" and i not in labels)]
        if missing:
            raise DataError(
                f"ISBI 2012: slices {missing} not found under {str(self.root_dir / split)!r};"
                f" expected indices among {sorted(images)[0]}..{sorted(images)[-1]} with both image and label"
            )
        self.split = split
        self.indices = indices
        self.image_paths = [images[i] for i in indices]
        self.label_paths = [labels[i] for i in indices] if split == "train" else []
        self.names = [p.stem for p in self.image_paths]
        self.transforms = transforms
        self.weight_map = weight_map
        self.w0 = w0
        self.sigma = sigma
        self.balance = balance
        self._weights: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.image_paths)

    def _read_mask(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        path = self.label_paths[i]
        raw = read_mask(path, num_classes=256, ignore_index=None, size=size, image_path=self.image_paths[i])
        values = torch.unique(raw).tolist()
        if not set(values) <= {0, 255}:
            raise DataError(
                f"ISBI 2012 label {str(path)!r} has values {values}; expected only 0 (membrane) and 255 (cell interior)"
            )
        return (raw == 0).long()

    def _weight(self, i: int, mask: torch.Tensor) -> torch.Tensor:
        if i not in self._weights:
            m = mask.numpy()
            cells, _ = ndimage.label(m == 0)  # default structure = 4-connectivity
            w = unet_weight_map(cells, m, num_classes=2, w0=self.w0, sigma=self.sigma, balance=self.balance)
            self._weights[i] = torch.from_numpy(w)
        return self._weights[i]

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=1)
        target: dict = {}
        if self.split == "train":
            mask = self._read_mask(i, tuple(image.shape[-2:]))
            target["mask"] = tv_tensors.Mask(mask)
            if self.weight_map:
                target["weight"] = tv_tensors.Mask(self._weight(i, mask).clone())
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"ISBI2012(root_dir={str(self.root_dir)!r}, split={self.split!r}, slices={len(self)},"
            f" weight_map={self.weight_map})"
        )


def split_key(role: str) -> str:
    """How an error names the split setting: data.train_split / data.val_split, or the split asked for."""
    return f"data.{role}_split" if role in ("train", "val") else f"split {role!r}"


@register_dataset("isbi2012", task="semantic", splits=("0-24", "25-29"), meta=class_meta(ISBI2012),
                  metrics=ISBI2012.metrics)
def build_isbi2012(data_cfg, role: str, spec: str) -> ISBI2012:
    try:
        indices = parse_indices(spec)
    except ValueError as e:
        raise ConfigError(f"{split_key(role)}: {e}") from None
    return ISBI2012(dataset_dir(data_cfg), indices=indices, weight_map=data_cfg.weight_map and role == "train",
                    w0=data_cfg.w0, sigma=data_cfg.sigma, balance=data_cfg.class_balance)
