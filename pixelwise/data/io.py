"""Reading images and index masks with errors that name the file, what was found and what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from PIL import Image

__all__ = ["DataError", "read_image", "read_mask"]

_IMAGE_MODES = {1: ("L",), 3: ("RGB",)}
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class DataError(ValueError):
    """A data file that cannot be used as it is (missing, corrupt, wrong mode, values or size)."""


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        # PNG readers keep the file open after load() (APNG support): copy the pixels and close it.
        with Image.open(path) as f:
            f.load()  # decoding errors in truncated files only surface here
            img = f.copy()
            img.format = f.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} file {str(path)!r} cannot be read as an image ({type(e).__name__}: {e})") from None
    return img


def read_image(path: str | Path, *, channels: int) -> torch.Tensor:
    """Read an 8-bit grayscale (channels=1, PIL mode L) or RGB (channels=3) image.

    Returns:
        (C, H, W) float32 in [0, 1].
    """
    if channels not in _IMAGE_MODES:
        raise ValueError(f"read_image: channels={channels}; expected 1 (grayscale) or 3 (RGB)")
    img = _open(path, "image")
    mode = img.mode
    if mode == "1" and channels == 1:  # bilevel: lossless as 0 / 255
        img, mode = img.convert("L"), "L"
    if mode not in _IMAGE_MODES[channels]:
        expected = "8-bit grayscale (mode L)" if channels == 1 else "8-bit RGB (mode RGB)"
        if mode in _HIGH_BIT_MODES:
            fix = "rescale it to 8 bits (for example with numpy: (a / a.max() * 255).astype('uint8')) and save again"
        elif mode in ("RGBA", "LA", "PA"):
            fix = "remove the alpha channel, for example Image.open(f).convert('RGB' if colour else 'L').save(f)"
        elif channels == 3 and mode in ("L", "1"):
            fix = (
                "this is a grayscale image: set the dataset's in_channels=1 (and one-element data.mean/std)"
                " or convert it to RGB"
            )
        elif channels == 1 and mode in ("RGB", "CMYK", "YCbCr", "P"):
            fix = (
                "this is a colour image: set the dataset's in_channels=3 (and three-element data.mean/std)"
                " or convert it to L"
            )
        else:
            fix = f"convert it, for example Image.open(f).convert({_IMAGE_MODES[channels][0]!r}).save(f)"
        raise DataError(f"image file {str(path)!r} has PIL mode {mode!r}; expected {expected}: {fix}")
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_mask(
    path: str | Path,
    *,
    num_classes: int,
    ignore_index: int | None,
    size: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
) -> torch.Tensor:
    """Read a class-index mask: an 8-bit single-channel PNG (mode L, or P whose indices are the classes).

    Args:
        num_classes: valid values are 0 .. num_classes - 1, plus `ignore_index`.
        size: (H, W) the mask must have (the image's size), or None to skip the check.
        image_path: the image the mask belongs to, named in the size-mismatch error.

    Returns:
        (H, W) int64.
    """
    img = _open(path, "mask")
    if img.mode not in ("L", "P"):
        hint = ""
        if img.mode in ("RGB", "RGBA"):
            hint = " (a colour-coded mask must first be converted to class indices, one index per pixel)"
        elif img.mode in _HIGH_BIT_MODES:
            hint = " (a 16/32-bit mask must be saved as 8-bit when there are at most 256 classes)"
        raise DataError(
            f"mask file {str(path)!r} has PIL mode {img.mode!r}; expected an 8-bit single-channel"
            f" class-index PNG (mode L or P){hint}"
        )
    if img.format == "JPEG":
        raise DataError(
            f"mask file {str(path)!r} is a JPEG; expected a lossless PNG (JPEG changes class indices at edges)"
        )
    array = np.asarray(img, dtype=np.uint8)
    if size is not None and tuple(array.shape) != tuple(size):
        against = f"image {str(image_path)!r}" if image_path is not None else "the image"
        raise DataError(
            f"mask file {str(path)!r} has size (H, W) = {tuple(array.shape)} but {against} has {tuple(size)};"
            " expected the same size"
        )
    values = np.unique(array)
    bad = values[(values >= num_classes) & (values != (ignore_index if ignore_index is not None else -1))]
    if bad.size:
        counts = {int(v): int((array == v).sum()) for v in bad[:20]}
        raise DataError(
            f"mask file {str(path)!r} has values {sorted(counts)} (pixel counts {counts}) outside"
            f" [0, {num_classes}) that are not ignore_index={ignore_index}; expected class indices."
            " Check num_classes / ignore_index, or re-encode the mask"
        )
    return torch.from_numpy(array.astype(np.int64))


def read_sample(image_path: str | Path, mask_path: str | Path, *, channels: int, num_classes: int,
                ignore_index: int | None) -> tuple[tv_tensors.Image, dict[str, tv_tensors.Mask]]:
    """An image and its index mask, checked against each other: (Image (C,H,W), {"mask": Mask (H,W)})."""
    image = read_image(image_path, channels=channels)
    mask = read_mask(mask_path, num_classes=num_classes, ignore_index=ignore_index, size=tuple(image.shape[-2:]),
                     image_path=image_path)
    return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}
