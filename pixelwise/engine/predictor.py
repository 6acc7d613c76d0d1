"""Inference: whole-image and overlap-tile prediction with mirrored borders, and test-time augmentation.

A model may map an input side to a smaller output side (the valid-convolution U-Net); it then has
`output_size(input_size)` and `input_size_for(output_size)`. Every prediction here goes through one
mechanism: for an output window, gather the input window around it from the image, extending the
image by mirroring where the window leaves it (U-Net section 2, Fig. 2), run the model and keep the
part of the output that belongs to the window.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.crf import crf_settings, dense_crf
from pixelwise.engine.precision import autocast, channels_last
from pixelwise.errors import ConfigError, InferenceError


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper, which carries the size methods."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _input_size_for(model: nn.Module, size: int) -> int:
    fn = getattr(_unwrap(model), "input_size_for", None)
    return fn(size) if fn else size


def _output_size(model: nn.Module, size: int) -> int:
    fn = getattr(_unwrap(model), "output_size", None)
    return fn(size) if fn else size


def mirror_index(index: torch.Tensor, n: int) -> torch.Tensor:
    """Map any integer coordinates into [0, n) by repeated mirroring (edge pixel not repeated)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.abs() % period
    return torch.where(index >= n, period - index, index)


def geometry(model: nn.Module, size: int) -> tuple[int, int]:
    """(input side, top margin) so the model's output starting at the margin covers `size` pixels."""
    in_size = _input_size_for(model, size)
    out_size = _output_size(model, in_size)
    # The output is centred on the input: equal context is lost on both sides.
    return in_size, (in_size - out_size) // 2


def gather_window(images: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """images (B,C,H,W) -> (B,C,height,width) starting at (top, left), mirrored outside the image."""
    H, W = images.shape[-2:]
    rows = mirror_index(torch.arange(top, top + height, device=images.device), H)
    cols = mirror_index(torch.arange(left, left + width, device=images.device), W)
    return images.index_select(-2, rows).index_select(-1, cols)


def forward_aligned(model: nn.Module, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """Logits (B,K,H,W) aligned with images (B,C,H,W), whatever sizes the model can take.

    Used for training and whole-image inference: the input is mirror-extended so the (possibly
    smaller) output covers exactly the image.
    """
    H, W = images.shape[-2:]
    in_h, m_h = geometry(model, H)
    in_w, m_w = geometry(model, W)
    if (in_h, in_w, m_h, m_w) != (H, W, 0, 0):
        images = gather_window(images, -m_h, -m_w, in_h, in_w)
    logits = model(images)
    if isinstance(logits, dict):  # {"out", "aux"} from a model with an auxiliary head, in training
        return {k: v[..., :H, :W] for k, v in logits.items()}
    return logits[..., :H, :W]


# The dihedral group of the square: (number of 90-degree rotations, horizontal flip).
_DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]
# infer.tta -> the transforms averaged.
_TTA = {False: _DIHEDRAL[:1], True: _DIHEDRAL, "hflip": [(0, False), (0, True)]}


def _apply(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _invert(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def tile_positions(size: int, tile: int, step: int) -> list[int]:
    """Starts of windows of `tile` pixels `step` apart covering `size`, the last flush with the end."""
    if size <= tile:
        return [0]
    pos = list(range(0, size - tile, step))
    return pos + [size - tile]


class Predictor:
    """Class probabilities and labels for whole images, optionally tiled and test-time augmented.

    tile: output tile side (None = the whole image in one pass); overlap: pixels shared by
    neighbouring output tiles (their probabilities are averaged); tta: True averages over the 8 flips and
    90-degree rotations (inverted before averaging), "hflip" over the image and its mirror image only.

    `predict_probs` takes an image normalised as in training. Called on an image as users have it
    (a path, a PIL image, a uint8 array (H, W) or (H, W, C)), the predictor reads it with `channels`,
    normalises it with `mean` / `std` (the training transform's own Normalize), and returns the label
    map (H, W); `scales` averages the probabilities over resized copies of the image (infer.scales);
    `threshold` applies to class 1 of a two-class model; `crf` (infer.crf) refines the
    probabilities with the fully connected CRF first; `refinement` (a CRF-as-RNN's learned CRF layer, with
    `refine(probs, image)`) does so in its place. `pixelwise.inference.load_predictor`
    sets all of these from what a checkpoint holds.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        tile: int | None = None,
        overlap: int = 0,
        tta: bool | str = False,
        batch_size: int = 4,
        precision: str = "fp32",
        channels_last: bool = False,
        channels: int | None = None,
        mean=None,
        std=None,
        threshold: float | None = None,
        crf: dict | None = None,
        refinement: nn.Module | None = None,
        class_names=None,
        scales=None,
    ) -> None:
        if tile is not None and tile <= 0:
            raise ConfigError(f"infer.tile must be a positive number of pixels or null, got {tile}")
        if tile is not None and not 0 <= overlap < tile:
            raise ConfigError(f"infer.overlap must be in [0, tile={tile}), got {overlap}")
        if not (isinstance(tta, bool) or tta == "hflip"):
            raise ConfigError(f"infer.tta must be true, false or 'hflip', got {tta!r}")
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.tile, self.overlap, self.tta, self.batch_size = tile, overlap, tta, batch_size
        if scales is not None and (not len(scales) or any(not 0 < float(x) <= 8 for x in scales)):
            raise ConfigError(f"infer.scales must be a non-empty list of resize factors in (0, 8], got {scales}")
        self.scales = [float(x) for x in scales] if scales is not None else None
        self.precision, self.channels_last = precision, channels_last
        autocast(self.device, precision, "infer.precision")  # checked now, not at the first image
        if channels_last and isinstance(model, nn.Module):
            model.to(memory_format=torch.channels_last)
        self.channels, self.threshold, self.class_names = channels, threshold, class_names
        self.crf = crf_settings(crf) if crf is not None else None  # (backend, CRFParams)
        if self.crf is not None and refinement is not None:
            raise ConfigError("infer.crf would run a second CRF after the model's own (model.crf): set infer.crf=null")
        self.refinement = refinement
        self._heads: list[tuple[str, int]] | None = None  # predict_heads: (head, classes) of the last pass
        self._bytes_per_pixel: float | None = None  # of the largest activation, per input pixel (check_fits)
        self.normalize = None
        if mean is not None:
            from pixelwise.data.transforms import Normalize

            self.normalize = Normalize(mean, std)

    def read(self, image, name: str = "the image") -> torch.Tensor:
        """An image as users have it -> (C, H, W) float in [0, 1], accepted or refused as `read_image` accepts or
        refuses image files (pixelwise.data.io.as_image)."""
        from pixelwise.data.io import as_image, image_size

        if self.channels is None:
            raise ConfigError("this Predictor was built without `channels`: give it normalised (C, H, W) tensors "
                              "through predict_probs, or build it with pixelwise.inference.load_predictor")
        if isinstance(image, (str, Path)):  # refused from its header, before its pixels are read
            self.check_fits(self.channels, *image_size(image), name)
        return as_image(image, channels=self.channels, name=name, grey_to_rgb=False)  # as the CLI reads files

    def preprocess(self, image, name: str = "the image") -> torch.Tensor:
        """An image as users have it -> (C, H, W) normalised as in training (`read`, then data.mean / data.std)."""
        image = self.read(image, name)
        return self.normalize(image) if self.normalize is not None else image

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised (C, H, W) image (a dataset's, after its transforms) back to [0, 1] as read."""
        if self.normalize is None:
            return image
        mean, std = (torch.tensor(v, dtype=image.dtype, device=image.device).view(-1, 1, 1)
                     for v in (self.normalize.mean, self.normalize.std))
        return image * std + mean

    def __call__(self, image, name: str | None = None) -> torch.Tensor:
        """The label map (H, W) int64 of an image as users have it (see the class docstring)."""
        return self.many([image], [name] if name else None)[0]

    def many(self, images: list, names: list[str] | None = None) -> list[torch.Tensor]:
        """The label maps of a list of images as users have them. Consecutive images of one size go through
        the model together (their windows, batch_size at a time: what `pixelwise serve` batches); images of
        other sizes are not padded to a common one, so every image gets the labels it gets alone."""
        names = names or [str(im) if isinstance(im, (str, Path)) else "the image" if len(images) == 1 else f"image {i}"
                          for i, im in enumerate(images)]
        read = [self.read(im, n) for im, n in zip(images, names)]
        out, start = [], 0
        while start < len(read):
            end = start + 1
            while end < len(read) and read[end].shape == read[start].shape:
                end += 1
            group = torch.stack([self.normalize(im) if self.normalize is not None else im for im in read[start:end]])
            what = names[start] if end - start == 1 else f"{names[start]} (and {end - start - 1} more of its size)"
            out += [self.postprocess(p, im) for p, im in zip(self.predict_batch(group, what), read[start:end])]
            start = end
        return out

    def postprocess(self, probs: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """The one output step of a semantic model, which eval, predict, the report and every runtime call:
        probs (K, H, W) and the image as read ((C, H, W) in [0, 1], not normalised: what a refinement such as a
        CRF needs) -> labels (H, W) int64: the most probable class, or class 1 at or above infer.threshold, after
        the fully connected CRF where infer.crf sets one (pixelwise.crf) or the model's learned one (model.crf)."""
        if (self.crf is not None or self.refinement is not None) and image is None:
            raise ConfigError("the CRF refines the probabilities with the image: give postprocess the image as read "
                              "(Predictor.read, or Predictor.denormalize of a dataset's image)")
        if self.refinement is not None:
            probs = self.refinement.refine(probs, image)
        elif self.crf is not None:
            backend, params = self.crf
            probs = dense_crf(probs, image, backend=backend, **vars(params))
        return probs_to_labels(probs, self.threshold)

    def _probs(self, windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """windows (N,C,h_in,w_in) -> probabilities (N,K,height,width) of the aligned output part."""
        transforms = _TTA[self.tta]
        total = None
        for k, flip in transforms:
            with autocast(self.device, self.precision, "infer.precision"):
                logits = self.model(channels_last(_apply(windows, k, flip), self.channels_last))
            if isinstance(logits, dict):  # a model with extra heads (FCN on SIFT Flow): the main one, or all
                heads = ["out"]
                if self._heads is not None:  # predict_heads
                    heads += sorted(logits.keys() - {"out", "aux"})
                    self._heads = [(h, logits[h].shape[1]) for h in heads]
                # each head's own softmax; side by side, the heads are tiled, flipped and scaled together
                probs = torch.cat([F.softmax(logits[h].float(), dim=1) for h in heads], dim=1)
            else:
                probs = F.softmax(logits.float(), dim=1)
            probs = _invert(probs, k, flip)
            total = probs if total is None else total + probs
        # A rotated window is valid too (the size rule is the same for height and width), and margins are
        # symmetric, so after inverting any transform the window starts at index 0.
        return total[..., :height, :width] / len(transforms)

    def predict_probs(self, image: torch.Tensor, name: str = "the image") -> torch.Tensor:
        """image (C,H,W), normalised as in training -> probabilities (K,H,W), float32, on the CPU.

        `name` (the file) is named in the error raised when a pass does not fit in memory.
        """
        if image.dim() != 3:
            raise ValueError(f"expected one image (C,H,W), got shape {tuple(image.shape)}")
        return self.predict_batch(image.unsqueeze(0), name)[0]

    def predict_heads(self, image: torch.Tensor, name: str = "the image") -> dict[str, torch.Tensor]:
        """Like predict_probs, for a model with extra heads (model.args.extra_heads): {"out": (K,H,W), head:
        (K_head,H,W), ...}, every head from the same passes (tiles, infer.tta, infer.scales)."""
        self._heads = []
        try:
            probs = self.predict_probs(image, name)
            heads = self._heads or [("out", probs.shape[0])]
        finally:
            self._heads = None
        return dict(zip([h for h, _ in heads], probs.split([k for _, k in heads])))

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor, name: str = "the images") -> torch.Tensor:
        """images (N,C,H,W) of one size, normalised -> probabilities (N,K,H,W): the windows of all N images go
        through the model batch_size at a time, each image's windows as predict_probs would cut them."""
        if images.dim() != 4:
            raise ValueError(f"expected a batch of images (N,C,H,W), got shape {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        largest = max(self.scales or [1.0])
        self.check_fits(c, max(1, round(h * largest)), max(1, round(w * largest)), name)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.scales is None:
                return self._predict(images.to(self.device))
            return sum(self._at_scale(images.to(self.device), s) for s in self.scales) / len(self.scales)
        except RuntimeError as e:  # torch.OutOfMemoryError is one; the CPU allocator raises a plain RuntimeError
            if not _out_of_memory(e):
                raise
            raise self._too_large(name, h, w, str(e).splitlines()[0][:120]) from None
        finally:
            self.model.train(was_training)

    def check_fits(self, channels: int, height: int, width: int, name: str = "the image") -> None:
        """Refuse, before anything is allocated, a whole-image pass that cannot fit in the device's free memory:
        it needs at least the model's largest activation over the whole image (measured once on a small input).
        Images up to 1 M pixels are not checked: no extra forward pass for the small images of a validation."""
        if self.tile is not None or height * width <= 1 << 20:
            return
        free = free_memory(self.device)
        if free is None:
            return
        if self._bytes_per_pixel is None:
            self._bytes_per_pixel = largest_activation(self.model, channels, self.device, self.precision)
        need = height * width * self._bytes_per_pixel
        if need > free:
            raise self._too_large(name, height, width, f"it needs at least {need / 1e9:.2f} GB and "
                                  f"{free / 1e9:.2f} GB is free")

    def _too_large(self, name: str, height: int, width: int, why: str) -> InferenceError:
        side = self.tile or max(height, width)
        return InferenceError(
            f"{name} ({height}x{width} pixels) does not fit in memory in passes of {side} pixels on {self.device} "
            f"({why}); set infer.tile to a smaller output tile, for example "
            f"-o infer.tile={max(64, min(512, side // 2))}, and infer.batch_size=1")

    def _windows(self, H: int, W: int) -> tuple[int, int, list[tuple[int, int]]]:
        if self.tile is None:
            return H, W, [(0, 0)]
        th, tw = min(self.tile, H), min(self.tile, W)
        step = self.tile - self.overlap
        return th, tw, [(y, x) for y in tile_positions(H, th, step) for x in tile_positions(W, tw, step)]

    def _at_scale(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        """Probabilities (N,K,H,W) of the images resized by `scale` (bilinear), brought back to (H, W)
        (multi-scale test-time augmentation, infer.scales); tiles and flips apply at every scale."""
        H, W = images.shape[-2:]
        size = (max(1, round(H * scale)), max(1, round(W * scale)))
        if size == (H, W):
            return self._predict(images)
        probs = self._predict(F.interpolate(images, size=size, mode="bilinear", align_corners=False))
        return F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """images (N,C,H,W) -> probabilities (N,K,H,W), averaged where windows overlap."""
        N, _, H, W = images.shape
        th, tw, positions = self._windows(H, W)
        in_h, m_h = geometry(self.model, th)
        in_w, m_w = geometry(self.model, tw)
        count = torch.zeros(1, H, W)
        for y, x in positions:
            count[:, y : y + th, x : x + tw] += 1
        canvas = None
        for chunk in _chunks([(n, y, x) for n in range(N) for y, x in positions], self.batch_size):
            windows = torch.cat([gather_window(images[n : n + 1], y - m_h, x - m_w, in_h, in_w) for n, y, x in chunk])
            probs = self._probs(windows, th, tw).cpu()
            if canvas is None:
                canvas = torch.zeros(N, probs.shape[1], H, W)
            for (n, y, x), p in zip(chunk, probs):
                canvas[n, :, y : y + th, x : x + tw] += p
        return canvas / count


def free_memory(device: torch.device) -> int | None:
    """Bytes still free on `device` (None where unknown): the host's available memory for the CPU."""
    from pixelwise.data import io

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return io.free_host_memory() if device.type == "cpu" else None


@torch.no_grad()
def largest_activation(model: nn.Module, channels: int, device: torch.device, precision: str = "fp32") -> float:
    """Bytes per input pixel of the largest tensor a module of `model` returns, on a small input in eval mode."""
    model = _unwrap(model)
    side = geometry(model, 64)[0]
    sizes = [0]

    def record(module, inputs, output):
        outputs = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
            else [output]
        sizes.extend(t.numel() * t.element_size() for t in outputs if torch.is_tensor(t))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision, "infer.precision"):
            model(torch.zeros(1, channels, side, side, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return max(sizes) / side**2


def _out_of_memory(e: RuntimeError) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "not enough memory" in text or "can't allocate memory" in text \
        or "out of memory" in text


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def probs_to_labels(probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """probs (K,H,W) -> labels (H,W) int64. A threshold applies to class 1 of a two-class model."""
    if threshold is None:
        return probs.argmax(0)
    if probs.shape[0] != 2:
        raise ConfigError(f"infer.threshold needs a two-class model, this one has {probs.shape[0]} classes")
    return (probs[1] >= threshold).long()
