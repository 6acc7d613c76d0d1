"""Reading images and index masks with errors that name the file, what was found and what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from PIL import Image, ImageOps

from pixelwise.errors import DataError

__all__ = ["DataError", "as_image", "read_image", "read_mask"]

_IMAGE_MODES = {1: ("L",), 3: ("RGB",)}
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _open(path: str | Path, what: str) -> Image.Image:
    """The image in `path`, decoded and closed. A JPEG's EXIF orientation is applied (the picture as viewers
    show it, as detectron2 reads images); files with several frames are refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        # PNG readers keep the file open after load() (APNG support): copy the pixels and close it.
        with Image.open(path) as f:
            frames = getattr(f, "n_frames", 1)
            f.load()  # decoding errors in truncated files only surface here
            img = ImageOps.exif_transpose(f) if what == "image" else f.copy()
            img.format = f.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} file {str(path)!r} cannot be read as an image ({type(e).__name__}: {e})") from None
    if frames > 1:
        raise DataError(f"{what} file {str(path)!r} has {frames} frames (an animation or a stack); expected a single "
                        "image: save each frame as a file of its own")
    return img


_GREY = "model.args.in_channels=1 with one-value data.mean / data.std"
_COLOUR = "model.args.in_channels=3 with three-value data.mean / data.std"


def read_image(path: str | Path, *, channels: int) -> torch.Tensor:
    """Read an 8-bit grayscale (channels=1, PIL mode L) or RGB (channels=3) image.

    Palette, CMYK and YCbCr images are converted to RGB when channels=3 (and a grey palette to L when
    channels=1): the conversion loses nothing a segmentation model could use.

    Returns:
        (C, H, W) float32 in [0, 1].
    """
    if channels not in _IMAGE_MODES:
        raise ValueError(f"read_image: channels={channels}; expected 1 (grayscale) or 3 (RGB)")
    img = _open(path, "image")
    mode = img.mode
    if mode == "1" and channels == 1:  # bilevel: lossless as 0 / 255
        img, mode = img.convert("L"), "L"
    if channels == 3 and mode in ("P", "CMYK", "YCbCr"):
        img, mode = img.convert("RGB"), "RGB"
    if channels == 1 and mode == "P" and _grey_palette(img):
        img, mode = img.convert("L"), "L"
    if mode not in _IMAGE_MODES[channels]:
        expected = "8-bit grayscale (mode L)" if channels == 1 else "8-bit RGB (mode RGB)"
        if mode in _HIGH_BIT_MODES:
            fix = "rescale it to 8 bits (for example with numpy: (a / a.max() * 255).astype('uint8')) and save again"
        elif mode in ("RGBA", "LA", "PA"):
            fix = "remove the alpha channel, for example Image.open(f).convert('RGB' if colour else 'L').save(f)"
        elif channels == 3 and mode in ("L", "1"):
            fix = f"this is a grayscale image, and the model takes colour: train it with {_GREY}, or convert the image to RGB"
        elif channels == 1 and mode in ("RGB", "CMYK", "YCbCr", "P"):
            fix = (f"this is a colour image, and the model takes grayscale: train it with {_COLOUR}, or convert the "
                   "image with Image.open(f).convert('L').save(f)")
        else:
            fix = f"convert it, for example Image.open(f).convert({_IMAGE_MODES[channels][0]!r}).save(f)"
        raise DataError(f"image file {str(path)!r} has PIL mode {mode!r}; expected {expected}: {fix}")
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def as_image(image, *, channels: int, name: str = "the image") -> torch.Tensor:
    """An image as users have it -> (channels, H, W) float32 in [0, 1].

    Takes a path, a PIL image, a uint8 numpy array (H, W) or (H, W, C), or a float tensor (C, H, W)
    already in [0, 1]. A grey image given to a three-channel model is repeated to RGB; anything else
    whose channels disagree with `channels` is refused, naming `name`.
    """
    if isinstance(image, (str, Path)):
        if channels == 3 and _grey_file(image):  # a grey file for a colour model (Mask R-CNN on ISBI): repeat it
            return read_image(image, channels=1).repeat(3, 1, 1)
        return read_image(image, channels=channels)
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if channels == 3 else "L")
        image = np.array(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DataError(f"{name}: a numpy array of dtype {image.dtype}; expected uint8 (H, W) or (H, W, C) "
                            "with values 0-255")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise DataError(f"{name}: a numpy array of shape {image.shape}; expected (H, W) or (H, W, C)")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if not torch.is_tensor(image) or image.dim() != 3 or not image.is_floating_point():
        raise DataError(f"{name}: got {type(image).__name__} {tuple(getattr(image, 'shape', ()))}; expected a path, a "
                        "PIL image, a uint8 array (H, W) or (H, W, C), or a float tensor (C, H, W) in [0, 1]")
    image = image.as_subclass(torch.Tensor)
    if image.shape[0] == 1 and channels == 3:
        return image.repeat(3, 1, 1)
    if image.shape[0] != channels:
        raise DataError(f"{name} has {image.shape[0]} channels; the model takes {channels}")
    return image


def _grey_file(path) -> bool:
    try:
        with Image.open(path) as img:  # reads the header only
            return img.mode in ("L", "1")
    except (OSError, ValueError):
        return False  # read_image names the problem


def _grey_palette(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _palette_classes(img: Image.Image, path: Path, palette, ignore_index: int | None, num_classes: int) -> np.ndarray:
    """A palette PNG's pixels as classes, read by colour: index v whose colour is class k's becomes k.

    VOC's masks (index = class, VOC colours) come out unchanged; a colour mask quantised to palette mode,
    whose indices are arbitrary, comes out as its colours say. A grey-ramp palette (index v drawn as
    (v, v, v)) carries no colours, so its indices are the classes.
    """
    array = np.asarray(img, dtype=np.uint8)
    table = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    values = np.unique(array).tolist()
    if all(v < len(table) and (table[v] == v).all() for v in values):
        return array
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.arange(256, dtype=np.uint8)
    for v in values:
        colour = table[v] if v < len(table) else None
        if colour is not None and v < len(colours) and (colours[v] == colour).all():
            continue
        match = np.nonzero((colours == colour).all(1))[0] if colour is not None else np.array([])
        if match.size:
            lut[v] = match[0]
        elif v != ignore_index:
            shown = tuple(int(c) for c in colour) if colour is not None else "none"
            raise DataError(
                f"mask file {str(path)!r} is a palette PNG whose index {v} has colour {shown}, which is not the colour "
                f"of any of the dataset's {num_classes} classes; palette masks are read by their colours, so this one "
                "cannot be read safely. If its indices are the class numbers, save it without the palette "
                "(Image.fromarray(np.asarray(Image.open(f))).save(f)); if it is a colour mask, convert its colours "
                "to class indices")
    return lut[array]


def read_mask(
    path: str | Path,
    *,
    num_classes: int,
    ignore_index: int | None,
    size: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
    palette=None,
    label_map: dict | None = None,
) -> torch.Tensor:
    """Read a class-index mask: an 8-bit single-channel PNG (mode L, or P).

    Args:
        num_classes: valid values are 0 .. num_classes - 1, plus `ignore_index`.
        size: (H, W) the mask must have (the image's size), or None to skip the check.
        image_path: the image the mask belongs to, named in the size-mismatch error.
        palette: the dataset's class colours; a mode-P mask is then read by its colours (`_palette_classes`)
            and refused when they are not the dataset's. None takes a P mask's indices as they are.
        label_map: stored value -> class (e.g. {255: 1} for binary masks saved as 0/255), applied first.

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
    if img.mode == "P" and palette is not None:
        array = _palette_classes(img, Path(path), palette, ignore_index, num_classes)
    else:
        array = np.asarray(img, dtype=np.uint8)
    if label_map:
        lut = np.arange(256, dtype=np.int64)
        for value, cls in label_map.items():
            lut[int(value)] = int(cls)
        array = lut[array]
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
            " Check num_classes / ignore_index / label_map, or re-encode the mask"
        )
    return torch.from_numpy(array.astype(np.int64))
