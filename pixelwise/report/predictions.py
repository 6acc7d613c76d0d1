"""Predict a set of image files into a folder: index PNGs, colour overlays, optional probability maps
(semantic models); per-image JSON with boxes, scores and RLE masks, instance-id PNGs and overlays (Mask R-CNN)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixelwise.data.io import DataError, read_image
from pixelwise.engine.predictor import Predictor, probs_to_labels
from pixelwise.report.visualize import DEFAULT_PALETTE, overlay, palette_for, save_index_png

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


def read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; grayscale files are repeated to three channels."""
    with Image.open(path) as img:
        gray = img.mode in ("L", "1")
    image = read_image(path, channels=1 if gray else 3)
    return image.repeat(3, 1, 1) if gray else image


def instance_map(masks: torch.Tensor, scores: torch.Tensor, score_threshold: float) -> np.ndarray:
    """(H, W) uint16: 0 background, i + 1 where detection i (scores in decreasing order) is the
    highest-scoring detection at or above score_threshold covering the pixel."""
    keep = torch.nonzero(scores >= score_threshold).flatten()
    ids = np.zeros(masks.shape[-2:], dtype=np.uint16)
    for i in keep.flip(0).tolist():  # lowest score first, so higher scores paint over it
        ids[masks[i].numpy()] = i + 1
    return ids


def predict_instances_to_folder(
    model: torch.nn.Module, paths: Sequence[Path], out_dir: str | Path, device: torch.device, *,
    class_names: Sequence[str] | None = None, score_threshold: float = 0.5, progress: bool = True,
) -> list[Path]:
    """Mask R-CNN on each image; writes <stem>.json (every detection: label, class name, score, box x1 y1 x2 y2
    in pixels, COCO RLE mask), <stem>_instances.png (16-bit instance ids of the detections scoring at least
    score_threshold, 1 = best) and <stem>_overlay.png (those instances coloured, with their boxes)."""
    import json

    from PIL import ImageDraw

    from pixelwise.engine.instances import detect
    from pixelwise.metrics.coco import masks_to_rle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        image = read_rgb(path)
        d = detect(model, [image], device)[0]
        names = [class_names[k] if class_names and k < len(class_names) else f"class{k}" for k in d["labels"].tolist()]
        instances = [{"label": int(k), "class_name": n, "score": float(s), "box": [float(v) for v in b],
                      "segmentation": rle}
                     for k, n, s, b, rle in zip(d["labels"], names, d["scores"], d["boxes"].tolist(), masks_to_rle(d["masks"]))]
        record = {"file": str(path), "height": image.shape[-2], "width": image.shape[-1], "instances": instances}
        (out / f"{path.stem}.json").write_text(json.dumps(record))
        ids = instance_map(d["masks"], d["scores"], score_threshold)
        Image.fromarray(ids).save(out / f"{path.stem}_instances.png")
        colours = [(0, 0, 0)] + [DEFAULT_PALETTE[1 + i % (len(DEFAULT_PALETTE) - 1)] for i in range(int(ids.max()))]
        picture = Image.fromarray(overlay(image, ids, colours, skip_class=0))
        draw = ImageDraw.Draw(picture)
        for i in np.unique(ids[ids > 0]).tolist():
            draw.rectangle(d["boxes"][i - 1].tolist(), outline=colours[i])
        picture.save(out / f"{path.stem}_overlay.png")
        written.append(out / f"{path.stem}.json")
    return written
