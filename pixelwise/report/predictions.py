"""Predict a set of image files into a folder: index PNGs, colour overlays, optional probability maps."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixelwise.data.io import DataError, read_image
from pixelwise.engine.predictor import Predictor, probs_to_labels
from pixelwise.report.visualize import overlay, palette_for, save_index_png

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders are expanded to the images they hold (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"input folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist")
    return paths


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = image.shape[0]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(f"data.mean/std have {len(mean)}/{len(std)} values for an image with {c} channels")
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def predict_to_folder(
    predictor: Predictor, paths: Sequence[Path], out_dir: str | Path, *, in_channels: int, num_classes: int,
    mean: Sequence[float], std: Sequence[float], palette=None, threshold: float | None = None,
    save_probs: bool = False, progress: bool = True,
) -> list[Path]:
    """Writes <stem>.png (class indices, paletted), <stem>_overlay.png and, if asked, <stem>_probs.npy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = palette_for(num_classes, palette)
    # Binary masks: draw only the positive class, in a colour that shows on grey images.
    binary = num_classes == 2
    overlay_colours = palette_for(num_classes) if binary else colours
    written = []
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        image = read_image(path, channels=in_channels)
        probs = predictor.predict_probs(normalize(image, mean, std))
        labels = probs_to_labels(probs, threshold).numpy().astype(np.uint8)
        save_index_png(labels, colours, out / f"{path.stem}.png")
        Image.fromarray(overlay(image, labels, overlay_colours, skip_class=0 if binary else None)).save(out / f"{path.stem}_overlay.png")
        if save_probs:
            np.save(out / f"{path.stem}_probs.npy", probs.numpy().astype(np.float16))
        written.append(out / f"{path.stem}.png")
    return written
