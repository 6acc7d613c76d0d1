"""Class statistics of a dataset's masks and the class-balancing weights made from them."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pixelwise.data.io import DataError, read_mask

__all__ = ["class_frequencies", "median_frequency_weights"]


def _count(mask: np.ndarray, num_classes: int, ignore_index: int | None, what: str) -> np.ndarray:
    flat = mask.ravel()
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad = np.unique(flat[(flat < 0) | (flat >= num_classes)])
        raise DataError(
            f"{what} has values {bad[:20].tolist()} outside [0, {num_classes}) that are not ignore_index={ignore_index}"
        )
    return np.bincount(flat, minlength=num_classes)


def class_frequencies(dataset, num_classes: int, ignore_index: int | None, progress: bool = True) -> np.ndarray:
    """Pixels of each class in each image of `dataset`, ignored pixels not counted.

    Masks are read straight from `dataset.mask_paths` when the dataset has them (no image decoding,
    no transforms); otherwise from `dataset[i][1]["mask"]`, which applies the dataset's transforms, so
    pass a dataset without random ones.

    Returns:
        (N, K) int64 `counts`: counts[i, c] = pixels of class c in image i. counts.sum(0) are the
        class totals and counts > 0 the per-image presence.
    """
    paths = getattr(dataset, "mask_paths", None)
    n = len(dataset)
    counts = np.zeros((n, num_classes), dtype=np.int64)
    for i in tqdm(range(n), desc="class frequencies", disable=not progress):
        if paths:
            mask = read_mask(paths[i], num_classes=num_classes, ignore_index=ignore_index).numpy()
            what = f"mask file {str(paths[i])!r}"
        else:
            mask = torch.as_tensor(dataset[i][1]["mask"]).numpy()
            what = f"mask of sample {i}"
        counts[i] = _count(mask, num_classes, ignore_index, what)
    return counts


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
