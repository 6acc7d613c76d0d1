"""Joint transforms on `(image, target)` samples, built on `torchvision.transforms.v2`.

image: `tv_tensors.Image` float32 (C, H, W) in [0, 1]; target: `{"mask": tv_tensors.Mask int64 (H, W),
optional "weight": tv_tensors.Mask float32 (H, W)}`. Geometric transforms move the image and every
Mask together (the weight map is a Mask so that it follows the labels). Randomness comes only from
torch's global RNG, so seeding with `torch.manual_seed` makes a sample exactly reproducible.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import is_pure_tensor

from pixelwise.config import DataConfig
from pixelwise.errors import ConfigError

__all__ = [
    "ElasticDeformation",
    "RandomRot90",
    "RandomIntensity",
    "RandomCrop",
    "RandomScale",
    "MirrorPad",
    "Normalize",
    "build_transforms",
    "instance_transforms",
]


def _refuse(transform: v2.Transform, inpt: Any) -> TypeError:
    # Boxes, key points or PIL images would silently fall out of alignment: refuse them.
    return TypeError(
        f"{type(transform).__name__}: got {type(inpt).__name__}, expected tv_tensors.Image, tv_tensors.Mask "
        "or a plain tensor"
    )


def _as_tensor(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


class ElasticDeformation(v2.Transform):
    """Smooth random elastic deformation (Ronneberger et al. 2015, section 3.1).

    Displacement vectors on a coarse `grid` x `grid` lattice are drawn from a Gaussian with standard
    deviation `sigma` pixels and interpolated bicubically to a per-pixel field. The same field warps
    the image (bilinear) and every Mask (nearest, so labels stay labels and the weight map follows),
    all with reflective borders.
    image: (..., H, W); masks: (..., H, W)
    """

    def __init__(self, grid: int = 3, sigma: float = 10.0) -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"ElasticDeformation: grid={grid!r}, expected an integer >= 2")
        if not sigma >= 0:
            raise ValueError(f"ElasticDeformation: sigma={sigma!r}, expected a standard deviation >= 0 (pixels)")
        self.grid = grid
        self.sigma = float(sigma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        # Drawn on the CPU so the field for a seed does not depend on the device.
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma  # (dx, dy) in pixels
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
        # align_corners=True: -1 and 1 are the centres of the first and last pixel.
        ys = torch.linspace(-1.0, 1.0, h)
        xs = torch.linspace(-1.0, 1.0, w)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        gx = gx + field[0] * (2.0 / max(w - 1, 1))
        gy = gy + field[1] * (2.0 / max(h - 1, 1))
        return {"grid": torch.stack([gx, gy], dim=-1)[None]}  # (1, H, W, 2)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) and not is_pure_tensor(inpt):
            raise _refuse(self, inpt)
        mode = "nearest" if isinstance(inpt, tv_tensors.Mask) else "bilinear"
        x = _as_tensor(inpt)
        h, w = x.shape[-2:]
        flat = x.reshape(1, -1, h, w)
        # Integer labels go through float32 (exact below 2**24) because grid_sample needs floats.
        src = flat if flat.is_floating_point() else flat.float()
        out = F.grid_sample(
            src, params["grid"].to(device=src.device, dtype=src.dtype), mode=mode,
            padding_mode="reflection", align_corners=True,
        )
        if not flat.is_floating_point():
            out = out.round().to(flat.dtype)
        return tv_tensors.wrap(out.reshape(x.shape), like=inpt)


class RandomRot90(v2.Transform):
    """Rotate image and masks together by k * 90 degrees, k uniform in {0, 1, 2, 3}.

    image: (..., H, W) -> (..., H, W) or (..., W, H)
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) and not is_pure_tensor(inpt):
            raise _refuse(self, inpt)
        return tv_tensors.wrap(torch.rot90(_as_tensor(inpt), params["k"], dims=(-2, -1)), like=inpt)


class RandomIntensity(v2.Transform):
    """Random brightness and contrast of the image only; masks pass through untouched.

    x -> clamp((b*x - m) * c + m, 0, 1), b ~ U[1-brightness, 1+brightness], c ~ U[1-contrast, 1+contrast],
    m the mean of b*x over the whole image. image: (..., C, H, W) float in [0, 1].
    """

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0) -> None:
        super().__init__()
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"RandomIntensity: {name}={value!r}, expected a value in [0, 1]")
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Both factors are always drawn, so the RNG stream does not depend on which are enabled.
        u = torch.rand(2) * 2.0 - 1.0
        return {"brightness": 1.0 + self.brightness * float(u[0]), "contrast": 1.0 + self.contrast * float(u[1])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        x = _as_tensor(inpt)
        if not x.is_floating_point():
            raise TypeError(f"RandomIntensity: image of dtype {x.dtype}, expected a float image in [0, 1]")
        x = x * params["brightness"]
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        x = ((x - mean) * params["contrast"] + mean).clamp(0.0, 1.0)
        return tv_tensors.wrap(x, like=inpt)


def _reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """x: (..., H, W), reflected (edge pixel not repeated); repeated for pads larger than the image."""
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])
    if min(shape[-2:]) < 2:  # nothing to reflect about
        # Replication padding takes floats only; integer labels are exact in float32 below 2**24.
        out = F.pad(x if x.is_floating_point() else x.float(), (left, right, top, bottom), mode="replicate")
        return out.to(x.dtype).reshape(*shape[:-2], *out.shape[-2:])
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        pads = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, pads, mode="reflect")
        left, right, top, bottom = (p - q for p, q in zip((left, right, top, bottom), pads))
    return x.reshape(*shape[:-2], *x.shape[-2:])


class RandomScale(v2.Transform):
    """Resize image and masks together by a factor drawn uniformly from [low, high] (the random scale of DeepLab
    and most street-scene recipes; with a crop after it, objects are seen at several sizes). The image is
    resized bilinearly (antialiased when shrinking), every Mask by nearest neighbour (labels stay labels).
    image: (..., H, W) -> (..., round(s H), round(s W))
    """

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"RandomScale: [{low}, {high}], expected 0 < low <= high")
        self.low, self.high = float(low), float(high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self.low + (self.high - self.low) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) and not is_pure_tensor(inpt):
            raise _refuse(self, inpt)
        return v2.functional.resize(inpt, params["size"], antialias=True)  # a Mask is resized by nearest


class RandomCrop(v2.Transform):
    """Random square crop of side `size` taken jointly from the image and masks.

    A side smaller than `size` is first padded on both sides: the image by reflection, integer masks
    with `ignore_index` (so the padding is not learnt from) and float masks (weight maps) with 0.
    image: (..., H, W) -> (..., size, size)
    """

    def __init__(self, size: int, *, ignore_index: int) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"RandomCrop: size={size!r}, expected a positive integer")
        self.size = size
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        pad_h, pad_w = max(self.size - h, 0), max(self.size - w, 0)
        top = int(torch.randint(0, h + pad_h - self.size + 1, ()).item())
        left = int(torch.randint(0, w + pad_w - self.size + 1, ()).item())
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom
        return {"padding": padding, "top": top, "left": left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) and not is_pure_tensor(inpt):
            raise _refuse(self, inpt)
        x = _as_tensor(inpt)
        if any(params["padding"]):
            if isinstance(inpt, tv_tensors.Mask):
                fill = 0.0 if x.is_floating_point() else self.ignore_index
                x = F.pad(x, params["padding"], value=fill)
            else:
                x = _reflect_pad(x, *params["padding"])
        top, left = params["top"], params["left"]
        x = x[..., top : top + self.size, left : left + self.size]
        return tv_tensors.wrap(x, like=inpt)


class Normalize(v2.Normalize):
    """(image - mean) / std per channel on the image only; a single mean/std applies to every channel.

    image: (..., C, H, W) float
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean, std = list(mean), list(std)
        if not mean or len(mean) != len(std):
            raise ValueError(f"Normalize: mean={mean} and std={std}, expected two lists of the same non-zero length")
        if any(not s > 0 for s in std):
            raise ValueError(f"Normalize: std={std}, expected every value > 0")
        super().__init__(mean, std)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        super().check_inputs(flat_inputs)
        n = len(self.mean)
        for inpt in flat_inputs:
            if isinstance(inpt, tv_tensors.Image) or is_pure_tensor(inpt):
                channels = inpt.shape[-3] if inpt.dim() >= 3 else None
                if channels is None or n not in (1, channels):
                    raise ValueError(
                        f"Normalize: image of shape {tuple(inpt.shape)} has {channels} channels but "
                        f"data.mean/data.std have {n} values; expected (C, H, W) and 1 value or one per channel"
                    )
                break  # only the first pure tensor is treated as the image


class MirrorPad(v2.Transform):
    """Extend image and masks by `margin` pixels on every side by mirroring (U-Net section 2, Fig. 2).

    Before a random crop of a valid-convolution network's input size, this lets every pixel of the
    image be a target while the context around it is real image wherever the image has it.
    image: (..., H, W) -> (..., H + 2 margin, W + 2 margin)
    """

    def __init__(self, margin: int) -> None:
        super().__init__()
        self.margin = margin

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) and not is_pure_tensor(inpt):
            raise _refuse(self, inpt)
        m = self.margin
        return tv_tensors.wrap(_reflect_pad(_as_tensor(inpt), m, m, m, m), like=inpt)


def build_transforms(
    data_cfg: DataConfig, *, train: bool, ignore_index: int, crop_size: int | None = None, context: int = 0
) -> Callable:
    """The sample pipeline `(image, target) -> (image, target)` for training or evaluation.

    Training: flips, rot90, elastic deformation, random scale, random crop, intensity and colour jitter (each
    as enabled in `data_cfg.augment`), then normalisation by `data_cfg.mean/std`. Evaluation: normalisation only.
    Targets with or without a "weight" map are accepted. The engine passes `crop_size` (the model's
    input side for data.augment.crop_size) and `context` (the margin a valid-convolution model loses
    on each side): the image is then mirror-extended by `context` before the crop.
    """
    aug = data_cfg.augment
    crop_size = crop_size or aug.crop_size
    steps: list[v2.Transform] = []
    if train:
        if aug.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if aug.vflip:
            steps.append(v2.RandomVerticalFlip(p=0.5))
        if aug.rot90:
            steps.append(RandomRot90())
        if aug.elastic:
            steps.append(ElasticDeformation(grid=aug.elastic_grid, sigma=aug.elastic_sigma))
        if aug.scale is not None:
            steps.append(RandomScale(*aug.scale))
        # Deform before cropping so that the crop border sees real context, not reflections.
        if context:
            steps.append(MirrorPad(context))
        if crop_size is not None:
            steps.append(RandomCrop(crop_size, ignore_index=ignore_index))
        if aug.brightness or aug.contrast:
            steps.append(RandomIntensity(brightness=aug.brightness, contrast=aug.contrast))
        if aug.saturation or aug.hue:  # colour only: the image's channels, never the masks
            if len(data_cfg.mean) != 3:
                raise ConfigError(f"data.augment.saturation / hue change colours: they need RGB images (3 values "
                                  f"in data.mean), got data.mean={data_cfg.mean}")
            steps.append(v2.ColorJitter(saturation=aug.saturation or None, hue=aug.hue or None))
    steps.append(Normalize(data_cfg.mean, data_cfg.std))
    return v2.Compose(steps)


def instance_transforms(data_cfg: DataConfig, *, train: bool) -> Callable:
    """Flips that move boxes and masks with the image (Detectron trains Mask R-CNN with horizontal flips
    only). No normalisation: Mask R-CNN normalises and resizes inside the model."""
    aug = data_cfg.augment
    unsupported = [k for k in ("crop_size", "rot90", "elastic", "brightness", "contrast", "scale", "saturation", "hue")
                   if getattr(aug, k)]
    if unsupported:
        raise ConfigError(f"data.augment.{unsupported[0]}={getattr(aug, unsupported[0])!r} is not supported for the "
                         f"instance dataset {data_cfg.dataset!r}; it offers data.augment.hflip and vflip")
    steps: list[v2.Transform] = []
    if train and aug.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if train and aug.vflip:
        steps.append(v2.RandomVerticalFlip(p=0.5))
    return v2.Compose(steps) if steps else _identity


def _identity(image: Any, target: Any) -> tuple[Any, Any]:
    return image, target
