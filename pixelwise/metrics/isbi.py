"""ISBI 2012 challenge scores for one slice (Arganda-Carreras et al. 2015, Front. Neuroanat.).

Both membrane maps are turned into cell segmentations: connected components of the non-membrane
pixels (4-connectivity), membrane = label 0. As in the challenge's current scores, VRand(thinned)
and VInfo(thinned), the membranes of both maps are first thinned to one-pixel lines (skeletonised),
so the scores measure how the image is split into cells, not how wide the membranes are drawn (the
challenge moved to thinning because its first Rand score was not robust to border widths). Both
scores are foreground-restricted: pixels on the ground truth's (thinned) membranes are left out
(ignore_labels=(0,), which skimage applies to the *true* image only). Predicted membrane pixels left
after thinning count as one predicted segment (label 0). `thin=False` scores the maps as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information
from skimage.morphology import skeletonize

__all__ = ["isbi_scores", "mean_isbi_scores", "cells_from_membrane", "thin_membrane"]

_IGNORE = (0,)


def cells_from_membrane(membrane: np.ndarray) -> np.ndarray:
    """(H, W) bool, True = membrane -> (H, W) int64 cell labels 1..n, 0 on membrane (4-connectivity)."""
    labels, _ = ndimage.label(~membrane)  # default structure = 4-connectivity in 2-D
    return labels.astype(np.int64)


def thin_membrane(membrane: np.ndarray) -> np.ndarray:
    """(H, W) bool membranes -> one-pixel-wide lines with the same cells between them.

    The image is framed with membrane while thinning, so a membrane that runs off the image keeps
    reaching its edge (a plain skeleton would stop short and join the cells on either side).
    """
    framed = np.pad(membrane, 1, constant_values=True)
    return skeletonize(framed)[1:-1, 1:-1]


def _check(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool or a.ndim != 2:
        raise ValueError(
            f"isbi_scores: {name} has dtype {a.dtype} and shape {a.shape}; expected a bool (H, W) array with"
            " True = membrane (from class indices use `mask == 1`; from ISBI label PNGs use `label == 0`)"
        )
    return a


def isbi_scores(pred_membrane: np.ndarray, true_membrane: np.ndarray, *, thin: bool = True) -> dict:
    """Scores of one slice; pred_membrane, true_membrane: (H, W) bool, True = membrane.

    Returns plain floats:
        adapted_rand_error, rand_precision, rand_recall: skimage.metrics.adapted_rand_error(true, pred)
            (1 - F-score of the Rand split / merge scores; lower error is better). In skimage's naming
            `rand_precision` is the split score (it drops when the prediction splits a true cell) and
            `rand_recall` the merge score (it drops when the prediction merges true cells).
        vi_split, vi_merge, vi: skimage.metrics.variation_of_information(true, pred): H(pred | true)
            (false splits), H(true | pred) (false merges), in bits, and their sum.
        pixel_error: fraction of pixels whose membrane / non-membrane label differs (never thinned).
    """
    pred_membrane = _check("pred_membrane", pred_membrane)
    true_membrane = _check("true_membrane", true_membrane)
    if pred_membrane.shape != true_membrane.shape:
        raise ValueError(
            f"isbi_scores: pred_membrane shape {pred_membrane.shape} != true_membrane shape {true_membrane.shape}"
        )
    true_cells = cells_from_membrane(thin_membrane(true_membrane) if thin else true_membrane)
    pred_cells = cells_from_membrane(thin_membrane(pred_membrane) if thin else pred_membrane)
    if true_cells.max() == 0:
        raise ValueError(
            "isbi_scores: true_membrane is membrane everywhere; the foreground-restricted scores are undefined"
        )
    are, precision, recall = adapted_rand_error(true_cells, pred_cells, ignore_labels=_IGNORE)
    vi_split, vi_merge = variation_of_information(true_cells, pred_cells, ignore_labels=_IGNORE)
    return {
        "adapted_rand_error": float(are),
        "rand_precision": float(precision),
        "rand_recall": float(recall),
        "vi_split": float(vi_split),
        "vi_merge": float(vi_merge),
        "vi": float(vi_split + vi_merge),
        "pixel_error": float(np.mean(pred_membrane != true_membrane)),
    }


def mean_isbi_scores(scores: Sequence[dict]) -> dict:
    """Mean of each key over slices (the dicts of `isbi_scores`)."""
    if not scores:
        raise ValueError("mean_isbi_scores: got no slices; expected at least one dict from isbi_scores")
    keys = list(scores[0])
    for i, s in enumerate(scores):
        if set(s) != set(keys):
            raise ValueError(f"mean_isbi_scores: slice {i} has keys {sorted(s)}; expected {sorted(keys)}")
    return {k: float(np.mean([s[k] for s in scores])) for k in keys}
