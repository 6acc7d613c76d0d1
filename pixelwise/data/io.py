"""Reading images and index masks with errors that name the file, what was found and what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pixelwise.errors import DataError

__all__ = ["DataError", "as_image", "free_host_memory", "image_size", "read_image", "read_mask"]

_IMAGE_MODES = {1: ("L",), 3: ("RGB",)}
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _open(path: str | Path, what: str) -> Image.Image:
    """The image in `path`, decoded and closed. A JPEG's EXIF orientation is applied (the picture as viewers
    show it, as detectron2 reads images); files with several frames are refused, and so are images too large
    for the free memory, from their header, before they are decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        # PNG readers keep the file open after load() (APNG support): copy the pixels and close it.
        with Image.open(path) as f:
            frames = getattr(f, "n_frames", 1)
            _check_fits(f, f"{what} file {str(path)!r}")
            try:
                f.load()  # decoding errors in truncated files only surface here
                img = ImageOps.exif_transpose(f) if what == "image" else f.copy()
            except MemoryError:
                raise _too_large(f"{what} file {str(path)!r}", f.width, f.height, len(f.getbands())) from None
            img.format = f.format
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} file {str(path)!r} cannot be read as an image ({type(e).__name__}: {e})") from None
    if frames > 1:
        raise DataError(f"{what} file {str(path)!r} has {frames} frames (an animation or a stack); expected a single "
                        "image: save each frame as a file of its own")
    return img


# Bytes per pixel and channel of reading an image: the decoded 8-bit pixels, a copy and the float32 tensor.
_READ_BYTES = 6


def free_host_memory() -> int | None:
    """Bytes of memory this process can still allocate: the system's available memory, within the container's
    (cgroup v2) limit; None where neither can be read."""
    free = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":  # the page cache (file pages) counts in memory.current but is given back on demand
            stat = dict(line.split() for line in Path("/sys/fs/cgroup/memory.stat").read_text().splitlines())
            used = int(Path("/sys/fs/cgroup/memory.current").read_text()) - int(stat.get("file", 0))
            free.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def _too_large(what: str, width: int, height: int, bands: int, free: int | None = None) -> DataError:
    need = width * height * bands * _READ_BYTES
    has = f" and {free / 1e9:.2f} GB is free" if free is not None else ", more than this machine could allocate"
    return DataError(f"{what} is {width}x{height} pixels ({bands} channel{'s' if bands > 1 else ''}): reading it "
                     f"needs at least {need / 1e9:.2f} GB of memory{has}; expected an image that fits in memory: split "
                     "it into smaller images (tiled inference, infer.tile, also reads the whole image)")


def _check_fits(img: Image.Image, what: str) -> None:
    """Refuse, from its header, an image whose pixels cannot be held in the free memory. Every image and mask read
    passes here (data loading's hot path): the free memory is asked only for images of 64 MB and more."""
    need = img.width * img.height * len(img.getbands()) * _READ_BYTES
    if need < 1 << 26:
        return
    free = free_host_memory()
    if free is not None and need > free:
        raise _too_large(what, img.width, img.height, len(img.getbands()), free)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as f:
            return f.height, f.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"image file {str(path)!r} cannot be read as an image ({type(e).__name__}: {e})") from None


_GREY = "model.args.in_channels=1 with one-value data.mean / data.std"
_COLOUR = "model.args.in_channels=3 with three-value data.mean / data.std"


def read_image(path: str | Path, *, channels: int, grey_to_rgb: bool = False) -> torch.Tensor:
    """Read an 8-bit grayscale (channels=1, PIL mode L) or RGB (channels=3) image.

    Palette, CMYK and YCbCr images are converted to RGB when channels=3 (and a grey palette to L when
    channels=1): the conversion loses nothing a segmentation model could use. A grey image for
    channels=3 is refused, or repeated to RGB with grey_to_rgb (Mask R-CNN on grey data).

    Returns:
        (C, H, W) float32 in [0, 1].
    """
    if channels not in _IMAGE_MODES:
        raise ValueError(f"read_image: channels={channels}; expected 1 (grayscale) or 3 (RGB)")
    return _pixels(_open(path, "image"), channels, f"image file {str(path)!r}", grey_to_rgb)


def _pixels(img: Image.Image, channels: int, what: str, grey_to_rgb: bool = False) -> torch.Tensor:
    """A PIL image -> (channels, H, W) float32 in [0, 1] by read_image's rules; `what` names it in errors."""
    mode = img.mode
    if channels == 3 and grey_to_rgb and mode in ("L", "1"):
        return _pixels(img, 1, what).repeat(3, 1, 1)
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
        raise DataError(f"{what} has PIL mode {mode!r}; expected {expected}: {fix}")
    try:
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    except (MemoryError, RuntimeError) as e:  # the CPU allocator raises a RuntimeError
        if isinstance(e, RuntimeError) and "alloc" not in str(e):
            raise
        raise _too_large(what, img.width, img.height, channels) from None


def as_image(image, *, channels: int, name: str = "the image", grey_to_rgb: bool = True) -> torch.Tensor:
    """An image as users have it -> (channels, H, W) float32 in [0, 1], accepted and refused as `read_image`
    accepts and refuses image files.

    Takes a path, a PIL image, a uint8 numpy array (H, W) or (H, W, C), or a float tensor (C, H, W) in
    [0, 1] (what read_image returns). A grey image for channels=3 is repeated to RGB (Mask R-CNN on grey
    data), or refused as read_image refuses it with grey_to_rgb=False; `name` names the image in errors.
    """
    if isinstance(image, (str, Path)):
        return read_image(image, channels=channels, grey_to_rgb=grey_to_rgb)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DataError(f"{name}: a numpy array of dtype {image.dtype}; expected uint8 (H, W) or (H, W, C) "
                            "with values 0-255")
        if not (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            raise DataError(f"{name}: a numpy array of shape {image.shape}; expected (H, W) or (H, W, C) with C = 1, "
                            "3 (RGB) or 4 (RGBA)")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if isinstance(image, Image.Image):
        return _pixels(image, channels, name, grey_to_rgb)
    if not torch.is_tensor(image) or image.dim() != 3 or not image.is_floating_point():
        raise DataError(f"{name}: got {type(image).__name__} {tuple(getattr(image, 'shape', ()))}; expected a path, a "
                        "PIL image, a uint8 array (H, W) or (H, W, C), or a float tensor (C, H, W) in [0, 1]")
    image = image.as_subclass(torch.Tensor)
    low, high = (float(v) for v in torch.aminmax(image)) if image.numel() else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):
        raise DataError(f"{name}: a float tensor with values in [{low:g}, {high:g}]; expected values in [0, 1] (as "
                        "read_image returns): divide 8-bit values by 255, or pass the uint8 array")
    if image.shape[0] == 1 and channels == 3 and grey_to_rgb:
        return image.repeat(3, 1, 1)
    if image.shape[0] != channels:
        fix = f": train it with {_GREY}, or convert the image to RGB" if image.shape[0] == 1 and channels == 3 else ""
        raise DataError(f"{name} has {image.shape[0]} channels; the model takes {channels}{fix}")
    return image


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


def read_mat(path, key: str, what: str, **options):
    """Variable `key` of a MATLAB 5 file (scipy.io.loadmat: data only, no code runs), or a DataError naming the file
    and what was expected. `options` go to loadmat (squeeze_me, struct_as_record)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(path, **options)[key]
    except (OSError, ValueError, KeyError, NotImplementedError, MatReadError) as e:
        raise DataError(f"{what} file {str(path)!r} cannot be read as a MATLAB file with {key}: "
                        f"{' '.join(str(e).split())[:160]}") from None
