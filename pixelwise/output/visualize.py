"""Images people look at: index PNGs with a palette, colour overlays, training curves."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

# Distinct colours for datasets that bring no palette of their own.
DEFAULT_PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
]


def palette_for(num_classes: int, palette: Sequence[Sequence[int]] | None = None) -> list[tuple[int, int, int]]:
    colours = [tuple(int(v) for v in c) for c in (palette or [])]
    for i in range(len(colours), num_classes):
        colours.append(DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)])
    return colours[:max(num_classes, len(colours))]


def save_index_png(labels: np.ndarray, palette: Sequence[Sequence[int]], path: str | Path) -> None:
    """labels (H,W) class indices -> paletted PNG whose pixel values are the indices."""
    if labels.max(initial=0) > 255:
        raise ValueError(f"cannot write {path}: class index {labels.max()} does not fit an 8-bit PNG")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path, format="PNG")


def png_base64(array: np.ndarray) -> str:
    """An array (H, W) uint8 / uint16 or (H, W, 3) uint8 as a PNG file, base64 (the JSON answers of pixelwise serve)."""
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """labels (H,W) -> RGB (H,W,3) uint8."""
    n = max(256, len(palette))
    table = np.zeros((n, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[labels.astype(np.int64).clip(0, n - 1)]


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """image (C,H,W) float in [0,1], C = 1 or 3 -> RGB (H,W,3) uint8."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return arr[:3].transpose(1, 2, 0)


def overlay(image: torch.Tensor, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.45,
            skip_class: int | None = None) -> np.ndarray:
    """Blend class colours over the image; pixels of `skip_class` keep the image as it is."""
    rgb = to_rgb(image).astype(np.float32)
    colour = colorize(labels, palette).astype(np.float32)
    blend = (1 - alpha) * rgb + alpha * colour
    if skip_class is not None:
        keep = labels == skip_class
        blend[keep] = rgb[keep]
    return blend.round().clip(0, 255).astype(np.uint8)


def plot_curves(log_csv: str | Path, out_png: str | Path, metrics: Sequence[str] = ()) -> Path:
    """Training loss and validation metrics against steps, from a run's log.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        return [p[0] for p in pts], [p[1] for p in pts]

    wanted = metrics or ("val_miou", "val_membrane_iou", "val_adapted_rand_error", "val_pixel_error")
    keys = [k for k in wanted if any(r.get(k) for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps, loss = series("loss")
    axes[0].plot(steps, loss, lw=1)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    for k in keys:
        s, v = series(k)
        if s:
            axes[1].plot(s, v, marker="o", ms=3, label=k.removeprefix("val_"))
    axes[1].set(title="validation", xlabel="step")
    if keys:
        axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from pixelwise.files import atomic_write

    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=110), what="training curves")
    plt.close(fig)
    return Path(out_png)
