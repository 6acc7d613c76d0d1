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

__all__ = ["SWEEP", "challenge_scores", "isbi_scores", "mean_isbi_scores", "cells_from_membrane", "thin_membrane",
           "vinfo"]

_IGNORE = (0,)
# The challenge's thresholds: its evaluation script (Fiji, trainableSegmentation's getMaximalVRandAfterThinning and
# getMaximalVInfoAfterThinning, called with 0.0 to 1.0 in steps of 0.1) binarises the proposal at each.
SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


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


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def vinfo(true_cells: np.ndarray, pred_cells: np.ndarray) -> float:
    """Foreground-restricted information theoretic score V_Info (Arganda-Carreras et al. 2015, section 2.4, alpha =
    0.5): I(S; T) / ((H(S) + H(T)) / 2) over the pixels inside true cells (true label != 0), S the predicted and T the
    true segmentation; 1 for identical segmentations, higher is better."""
    fg = true_cells != 0
    t, s = true_cells[fg].astype(np.int64), pred_cells[fg].astype(np.int64)
    if t.size == 0:
        raise ValueError("vinfo: the true segmentation has no cell pixels; the score is undefined")
    joint = np.unique(t * (int(s.max()) + 1) + s, return_counts=True)[1]
    h_s, h_t = _entropy(np.unique(s, return_counts=True)[1]), _entropy(np.unique(t, return_counts=True)[1])
    if h_s + h_t == 0:  # one segment each: identical
        return 1.0
    return float(2 * (h_s + h_t - _entropy(joint)) / (h_s + h_t))


def challenge_scores(membrane_probs: Sequence[np.ndarray], true_membranes: Sequence[np.ndarray],
                     thresholds: Sequence[float] = SWEEP) -> dict:
    """The ISBI 2012 challenge's scores of membrane probability maps (one (H, W) float array per slice).

    As the challenge's script does, the proposal (the probability of *not* being membrane, 1 - p) is binarised at
    every threshold t of `thresholds`: membrane where 1 - p <= t. At each t, V_Rand(thinned) (= 1 -
    adapted_rand_error of `isbi_scores`) and V_Info(thinned) (`vinfo` after the same thinning) are averaged over the
    slices; the challenge reports the maximum over thresholds of each (the leaderboard ranks by V_Rand). Returns
    vrand_sweep, vrand_sweep_threshold, vinfo_sweep, vinfo_sweep_threshold (higher is better) and
    vrand_by_threshold, vinfo_by_threshold (lists, in the order of `thresholds`).
    """
    if len(membrane_probs) != len(true_membranes) or not len(membrane_probs):
        raise ValueError(f"challenge_scores: {len(membrane_probs)} probability maps and {len(true_membranes)} true "
                         "membrane maps; expected the same number, at least one")
    vrand = np.zeros((len(thresholds), len(membrane_probs)))
    vinf = np.zeros_like(vrand)
    for j, (prob, truth) in enumerate(zip(membrane_probs, true_membranes)):
        prob, truth = np.asarray(prob, dtype=np.float64), _check("true_membrane", truth)
        if prob.shape != truth.shape or not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
            raise ValueError(f"challenge_scores: slice {j}: probability map of shape {prob.shape} (range "
                             f"{prob.min():.3g}..{prob.max():.3g}); expected values in [0, 1] of shape {truth.shape}")
        true_cells = cells_from_membrane(thin_membrane(truth))
        for i, t in enumerate(thresholds):
            pred_cells = cells_from_membrane(thin_membrane(1 - prob <= t))
            vrand[i, j] = 1 - adapted_rand_error(true_cells, pred_cells, ignore_labels=_IGNORE)[0]
            vinf[i, j] = vinfo(true_cells, pred_cells)
    out = {}
    for name, table in (("vrand", vrand.mean(axis=1)), ("vinfo", vinf.mean(axis=1))):
        best = int(np.argmax(table))
        out[f"{name}_sweep"], out[f"{name}_sweep_threshold"] = float(table[best]), float(thresholds[best])
        out[f"{name}_by_threshold"] = [float(v) for v in table]
    return out


def mean_isbi_scores(scores: Sequence[dict]) -> dict:
    """Mean of each key over slices (the dicts of `isbi_scores`)."""
    if not scores:
        raise ValueError("mean_isbi_scores: got no slices; expected at least one dict from isbi_scores")
    keys = list(scores[0])
    for i, s in enumerate(scores):
        if set(s) != set(keys):
            raise ValueError(f"mean_isbi_scores: slice {i} has keys {sorted(s)}; expected {sorted(keys)}")
    return {k: float(np.mean([s[k] for s in scores])) for k in keys}
