"""ISBI 2012 EM segmentation challenge (neuronal membranes), the first benchmark of U-Net.

Two layouts of the dataset folder are read, as they are:
  the official download (https://imagej.net/events/isbi-2012-segmentation-challenge): train-volume.tif
    (30 pages, 8-bit grayscale), train-labels.tif (30 pages, 0 = membrane, 255 = cell interior) and
    test-volume.tif (no labels), side by side; slice i is page i.
  one PNG per slice: train/image/NN.png, train/label/NN.png, test/image/NN.png (same encodings).
Where both are present the PNG folders are read. Classes here: 0 = cell interior, 1 = membrane, so that
membrane is the positive class of binary metrics and thresholds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data.io import _HIGH_BIT_MODES, DataError, _grey_palette, image_size, read_image, read_mask
from pixelwise.data.paths import dataset_dir, sample_dir
from pixelwise.data.registry import class_meta, register_dataset
from pixelwise.errors import ConfigError
from pixelwise.metrics import ISBI_METRICS
from pixelwise.ops.weight_map import unet_weight_map

__all__ = ["ISBI2012", "NoSliceFiles", "VOLUMES", "parse_indices"]

# The official download's multi-page TIFFs of each split: (images, labels).
VOLUMES = {"train": ("train-volume.tif", "train-labels.tif"), "test": ("test-volume.tif", None)}
_LABEL_VALUES = "expected only 0 (membrane) and 255 (cell interior)"


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


def _grey_page(page: Image.Image, what: str) -> np.ndarray:
    """One TIFF page as (H, W) uint8. Grey pages are taken as they are; bilevel pages, grey palettes and RGB pages
    whose three channels are equal are converted, which is exact; colour, alpha and 16/32-bit pages are refused."""
    mode = page.mode
    if mode == "L":
        return np.asarray(page, dtype=np.uint8)
    if mode == "1" or (mode == "P" and _grey_palette(page)):
        return np.asarray(page.convert("L"), dtype=np.uint8)
    if mode == "RGB":
        rgb = np.asarray(page, dtype=np.uint8)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        raise DataError(f"{what} is colour (RGB with differing channels); expected 8-bit grayscale pages as in the "
                        "official download: convert the stack to 8-bit grey (Fiji: Image > Type > 8-bit)")
    if mode in _HIGH_BIT_MODES:
        raise DataError(f"{what} has PIL mode {mode!r} (16 or 32 bits per pixel); expected 8-bit grayscale pages (mode "
                        "'L') as in the official download: rescale the stack to 8 bits (Fiji: Image > Type > 8-bit)")
    raise DataError(f"{what} has PIL mode {mode!r}; expected 8-bit grayscale pages (mode 'L') as in the official "
                    "download")


def _read_volume(path: Path, what: str) -> np.ndarray:
    """Every page of a multi-page TIFF as (N, H, W) uint8, read by Pillow (which decodes uncompressed, LZW, PackBits
    and Deflate TIFFs with no extra package); `what` ("image volume", "label volume") names it in errors."""
    name = f"ISBI 2012 {what} {str(path)!r}"
    pages: list[np.ndarray] = []
    try:
        with Image.open(path) as f:
            if f.format != "TIFF":
                raise DataError(f"{name} is a {f.format} file; expected a multi-page TIFF as in the official download")
            for k in range(getattr(f, "n_frames", 1)):
                f.seek(k)
                pages.append(_grey_page(f, f"{name} page {k}"))
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{name} cannot be read as a multi-page TIFF ({type(e).__name__}: {e})") from None
    for k, page in enumerate(pages):
        if page.shape != pages[0].shape:
            raise DataError(f"{name} page {k} is {page.shape[0]}x{page.shape[1]} pixels but page 0 is "
                            f"{pages[0].shape[0]}x{pages[0].shape[1]}; expected pages of one size")
    return np.stack(pages)


class NoSliceFiles(DataError, AttributeError):
    """`image_paths` / `label_paths` of an ISBI2012 read from TIFF volumes, whose slices are pages, not files.

    Also an AttributeError: to code that asks whether a dataset has image files (getattr(ds, "image_paths", None),
    hasattr) it has none; code that needs them gets this one-line error instead of wrong files."""


class ISBI2012(torch.utils.data.Dataset):
    """ISBI 2012 slices as (image, target), from the official TIFF volumes or one PNG per slice (see the module).

    image: tv_tensors.Image float32 (1, H, W) in [0, 1].
    target: {"mask": tv_tensors.Mask int64 (H, W)} (0 = cell, 1 = membrane), plus
    {"weight": tv_tensors.Mask float32 (H, W)} when `weight_map` (U-Net section 3, eq. 2, with cells
    = 4-connected interior regions; computed once per slice and cached). For split="test" the target
    is an empty dict (the challenge never released test labels).

    `layout` is "png" or "tiff". With PNGs, `image_paths` / `label_paths` are the slice files; read from TIFF
    volumes (`image_volume`, `label_volume`, read once and checked when the dataset is built) it has no slice files
    and those attributes raise NoSliceFiles. Either way `image_array(i)`, `image_size(i)`, `read_mask(i)`,
    `image_location(i)` / `mask_location(i)` (for messages) and `names` ("00", "25", ...) describe slice i.
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
        self.split = split
        self.image_volume: Path | None = None
        self.label_volume: Path | None = None
        self._image_paths: list[Path] | None = None
        self._label_paths: list[Path] | None = None
        self._pages: np.ndarray | None = None  # TIFF layout: the pages of `indices`, (N, H, W) uint8
        self._label_pages: np.ndarray | None = None
        volume = self.root_dir / VOLUMES[split][0]
        if not (self.root_dir / split / "image").is_dir() and volume.is_file():
            self.layout = "tiff"
            self.indices = self._read_volumes(volume, indices)
            self.names = [f"{i:02d}" for i in self.indices]
        else:
            if not (self.root_dir / split).is_dir():
                raise DataError(
                    f"ISBI 2012: {str(self.root_dir)!r} has neither {VOLUMES[split][0]} (the official download) nor "
                    f"{split}/image/ with numbered PNGs (00.png, 01.png, ...); expected either layout"
                )
            self.layout = "png"
            images = _numbered_pngs(self.root_dir / split / "image")
            labels = _numbered_pngs(self.root_dir / split / "label") if split == "train" else {}
            indices = sorted(images) if indices is None else list(indices)
            missing = [i for i in indices if i not in images or (split == "train" and i not in labels)]
            if missing:
                raise DataError(
                    f"ISBI 2012: slices {missing} not found under {str(self.root_dir / split)!r};"
                    f" expected indices among {sorted(images)[0]}..{sorted(images)[-1]} with both image and label"
                )
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

    def _read_volumes(self, volume: Path, indices: Sequence[int] | None) -> list[int]:
        """Read and check the official TIFF volumes of the split; keep the pages of `indices` (None: all)."""
        pages = _read_volume(volume, "image volume")
        count, (h, w) = len(pages), pages.shape[1:]
        indices = list(range(count)) if indices is None else list(indices)
        missing = [i for i in indices if not 0 <= i < count]
        if missing:
            raise DataError(f"ISBI 2012: slices {missing} not found in {str(volume)!r}; expected indices among "
                            f"0..{count - 1} (its {count} pages)")
        self.image_volume, self._pages = volume, pages[indices]
        label_name = VOLUMES[self.split][1]
        if label_name is None:
            return indices
        label_volume = self.root_dir / label_name
        if not label_volume.is_file():
            raise DataError(f"ISBI 2012: {str(volume)!r} has no {label_name} beside it ({str(label_volume)!r} is not a "
                            f"file); expected both files of the official download for split {self.split!r}")
        labels = _read_volume(label_volume, "label volume")
        if len(labels) != count:
            raise DataError(f"ISBI 2012 label volume {str(label_volume)!r} has {len(labels)} pages but image volume "
                            f"{str(volume)!r} has {count}; expected one label page per image page")
        if labels.shape[1:] != (h, w):
            raise DataError(f"ISBI 2012 label volume {str(label_volume)!r} has pages of {labels.shape[1]}x"
                            f"{labels.shape[2]} pixels but image volume {str(volume)!r} has {h}x{w}; expected the same")
        for i in indices:
            if ((labels[i] != 0) & (labels[i] != 255)).any():
                raise DataError(f"ISBI 2012 label volume {str(label_volume)!r} page {i} has values "
                                f"{np.unique(labels[i])[:20].tolist()}; {_LABEL_VALUES}")
        self.label_volume, self._label_pages = label_volume, labels[indices]
        return indices

    def _no_files(self, attribute: str) -> NoSliceFiles:
        return NoSliceFiles(
            f"ISBI 2012 in {str(self.root_dir)!r} is read from the TIFF volume {str(self.image_volume)!r}, whose "
            f"slices are pages, not files, so the dataset has no {attribute}; read slices with dataset[i], "
            "image_array(i) or read_mask(i), or use the PNG layout (train/image/NN.png, train/label/NN.png, "
            "test/image/NN.png)"
        )

    @property
    def image_paths(self) -> list[Path]:
        """The slices' image files (PNG layout); NoSliceFiles for TIFF volumes."""
        if self._image_paths is None:
            raise self._no_files("image_paths")
        return self._image_paths

    @image_paths.setter
    def image_paths(self, paths: Sequence[Path]) -> None:
        self._image_paths = list(paths)

    @property
    def label_paths(self) -> list[Path]:
        """The slices' label files (PNG layout; [] for split="test"); NoSliceFiles for TIFF volumes."""
        if self._label_paths is None:
            raise self._no_files("label_paths")
        return self._label_paths

    @label_paths.setter
    def label_paths(self, paths: Sequence[Path]) -> None:
        self._label_paths = list(paths)

    def __len__(self) -> int:
        return len(self.indices)

    def image_location(self, i: int) -> str:
        """Where slice i's image is, for messages: "'.../train/image/03.png'" or "page 3 of '.../train-volume.tif'"."""
        if self.layout == "tiff":
            return f"page {self.indices[i]} of {str(self.image_volume)!r}"
        return repr(str(self.image_paths[i]))

    def mask_location(self, i: int) -> str:
        """Where slice i's label is, for messages (label_census names it)."""
        if self.layout == "tiff":
            return f"page {self.indices[i]} of label volume {str(self.label_volume)!r}"
        return f"label file {str(self.label_paths[i])!r}"

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of slice i (a PNG's from its header)."""
        if self.layout == "tiff":
            return tuple(self._pages.shape[1:])
        return image_size(self.image_paths[i])

    def image_array(self, i: int) -> np.ndarray:
        """Slice i as a (H, W) uint8 array, as a Predictor takes it (predictions of a dataset without image files)."""
        if self.layout == "tiff":
            return self._pages[i].copy()
        return self._image(i)[0].mul(255).round_().to(torch.uint8).numpy()

    def _image(self, i: int) -> torch.Tensor:
        if self.layout == "tiff":  # as read_image converts an 8-bit grey file
            return torch.from_numpy(self._pages[i].copy())[None].float().div_(255.0)
        return read_image(self.image_paths[i], channels=1)

    def read_mask(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Slice i's label as (H, W) int64 classes (0 = cell, 1 = membrane), checked to hold only 0 and 255 and,
        given `size` (H, W), to be that size. Labels only: no image is decoded."""
        if self.split != "train":
            raise DataError(f"ISBI 2012 split {self.split!r} has no labels (the challenge never released them)")
        if self.layout == "tiff":  # checked when the volumes were read
            raw = torch.from_numpy(self._label_pages[i].astype(np.int64))
            if size is not None and tuple(raw.shape) != tuple(size):
                raise DataError(f"ISBI 2012 {self.mask_location(i)} is {tuple(raw.shape)} but the image is "
                                f"{tuple(size)}; expected the same size")
            return (raw == 0).long()
        path = self.label_paths[i]
        raw = read_mask(path, num_classes=256, ignore_index=None, size=size,
                        image_path=self.image_paths[i] if size is not None else None)
        if ((raw != 0) & (raw != 255)).any():  # (torch.unique sorts: 0.2 s a slice on 2 cores)
            raise DataError(f"ISBI 2012 label {str(path)!r} has values {torch.unique(raw).tolist()}; {_LABEL_VALUES}")
        return (raw == 0).long()

    def _weight(self, i: int, mask: torch.Tensor) -> torch.Tensor:
        if i not in self._weights:
            m = mask.numpy()
            cells, _ = ndimage.label(m == 0)  # default structure = 4-connectivity
            w = unet_weight_map(cells, m, num_classes=2, w0=self.w0, sigma=self.sigma, balance=self.balance)
            self._weights[i] = torch.from_numpy(w)
        return self._weights[i]

    def __getitem__(self, i: int):
        image = self._image(i)
        target: dict = {}
        if self.split == "train":
            mask = self.read_mask(i, tuple(image.shape[-2:]))
            target["mask"] = tv_tensors.Mask(mask)
            if self.weight_map:
                target["weight"] = tv_tensors.Mask(self._weight(i, mask).clone())
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        source = f", volume={self.image_volume.name!r}" if self.layout == "tiff" else ""
        return (
            f"ISBI2012(root_dir={str(self.root_dir)!r}, split={self.split!r}{source}, slices={len(self)},"
            f" weight_map={self.weight_map})"
        )


def split_key(role: str) -> str:
    """How an error names the split setting: data.train_split / data.val_split, or the split asked for."""
    return f"data.{role}_split" if role in ("train", "val") else f"split {role!r}"


@register_dataset("isbi2012", task="semantic", splits=("0-24", "25-29"), meta=class_meta(ISBI2012),
                  metrics=ISBI2012.metrics)
def build_isbi2012(data_cfg, role: str, spec: str, folder: Path | None = None) -> ISBI2012:
    try:
        indices = parse_indices(spec)
    except ValueError as e:
        raise ConfigError(f"{split_key(role)}: {e}") from None
    return ISBI2012(folder or dataset_dir(data_cfg), indices=indices, weight_map=data_cfg.weight_map and role == "train",
                    w0=data_cfg.w0, sigma=data_cfg.sigma, balance=data_cfg.class_balance)


@register_dataset("isbi2012-sample", task="semantic", splits=("0-7", "25-28"), meta=class_meta(ISBI2012),
                  metrics=ISBI2012.metrics)
def build_isbi2012_sample(data_cfg, role: str, spec: str) -> ISBI2012:
    """12 real ISBI 2012 slices bundled in the package (slices 0-7 and 25-28, centre 352 x 352; see its README.txt):
    for the demo and the tests where the full dataset is absent. data.root is not read."""
    return build_isbi2012(data_cfg, role, spec, folder=sample_dir("isbi2012-sample"))
