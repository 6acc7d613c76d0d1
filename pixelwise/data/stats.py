"""Class statistics of a dataset's masks and the class-balancing weights made from them."""
from __future__ import annotations

import numpy as np
import torch

from pixelwise.errors import DataError
from pixelwise.progress import progress as track

__all__ = ["class_frequencies", "label_census", "median_frequency_weights"]


def _count(mask: np.ndarray, num_classes: int, ignore_index: int | None, what: str) -> tuple[np.ndarray, int]:
    flat = mask.ravel()
    ignored = 0
    if ignore_index is not None:
        keep = flat != ignore_index
        ignored = int(flat.size - keep.sum())
        flat = flat[keep]
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad = np.unique(flat[(flat < 0) | (flat >= num_classes)])
        raise DataError(
            f"{what} has values {bad[:20].tolist()} outside [0, {num_classes}) that are not ignore_index={ignore_index}"
        )
    return np.bincount(flat, minlength=num_classes), ignored


def _mask_name(dataset, i: int) -> str:
    """Mask i of a dataset with `read_mask`, named for errors: its file, or the dataset's own `mask_location(i)`
    where masks are not files of their own (ISBI 2012's TIFF volume: a page)."""
    locate = getattr(dataset, "mask_location", None)
    if locate is not None:
        return locate(i)
    paths = getattr(dataset, "mask_paths", None)
    return f"mask file {str(paths[i])!r}" if paths else f"mask {i}"


def label_census(dataset, num_classes: int, ignore_index: int | None,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each class, and ignored pixels, in each image of `dataset`.

    Masks come from `dataset.read_mask(i)` when the dataset has it (the mask file only: no image
    decoding, no transforms); otherwise from `dataset[i][1]["mask"]`, which applies the dataset's
    transforms, so pass a dataset without random ones.

    Returns:
        (N, K) int64 `counts` (counts[i, c] = pixels of class c in image i; counts.sum(0) are the class
        totals and counts > 0 the per-image presence) and (N,) int64 ignored pixels per image.
    """
    n = len(dataset)
    counts = np.zeros((n, num_classes), dtype=np.int64)
    ignored = np.zeros(n, dtype=np.int64)
    reader = getattr(dataset, "read_mask", None)
    for i in track(range(n), desc="class frequencies", unit="mask", enabled=progress):
        if reader is not None:
            mask, what = reader(i).numpy(), _mask_name(dataset, i)
        else:
            mask, what = torch.as_tensor(dataset[i][1]["mask"]).numpy(), f"mask of sample {i}"
        counts[i], ignored[i] = _count(mask, num_classes, ignore_index, what)
    return counts, ignored


def class_frequencies(dataset, num_classes: int, ignore_index: int | None, progress: bool = True) -> np.ndarray:
    """(N, K) pixels of each class in each image of `dataset`, ignored pixels not counted (see label_census)."""
    return label_census(dataset, num_classes, ignore_index, progress)[0]


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015, section 4.1): weight_c = median_freq / freq_c.

    counts: (N, K) pixels per image and class, from `class_frequencies`. freq_c is the pixels of class
    c over the (non-ignored) pixels of the images where c is present; median_freq is the median of
    freq_c over the classes present somewhere. A class never present gets weight 0: it contributes no
    loss terms anyway, and 0 keeps the weights finite.

    Returns:
        (K,) float64.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"median_frequency_weights: counts of shape {counts.shape}, expected (N, K)")
    present = counts > 0
    pixels_where_present = (counts.sum(1, keepdims=True) * present).sum(0)
    seen = pixels_where_present > 0
    weights = np.zeros(counts.shape[1])
    if seen.any():
        freq = counts.sum(0)[seen] / pixels_where_present[seen]
        weights[seen] = np.median(freq) / freq
    return weights
