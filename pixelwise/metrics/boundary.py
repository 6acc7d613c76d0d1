"""Accuracy near object boundaries: the "trimap" of Kohli, Ladicky & Torr (IJCV 2009), which DeepLab (Chen et al.,
ICLR 2015, section 5 and Fig. 5) uses to show where a CRF helps: pixel accuracy within a band of k pixels around
the ground truth's label boundaries, for several k."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

TRIMAP_WIDTHS = (2, 5, 10, 20)  # band half-widths in pixels


def trimap_counts(pred: torch.Tensor, mask: torch.Tensor, ignore_index: int | None,
                  widths=TRIMAP_WIDTHS) -> dict[int, tuple[int, int]]:
    """{k: (correct, labelled pixels)} within k pixels (Euclidean) of a pixel whose 4-neighbour has another label,
    ignore_index excluded from both the boundaries and the counts."""
    truth = mask.cpu().numpy()
    labelled = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, bool)
    edge = np.zeros(truth.shape, bool)
    for a, b in ((np.s_[:-1, :], np.s_[1:, :]), (np.s_[:, :-1], np.s_[:, 1:])):  # vertical, horizontal neighbours
        differs = (truth[a] != truth[b]) & labelled[a] & labelled[b]
        edge[a] |= differs
        edge[b] |= differs
    if not edge.any():
        return {k: (0, 0) for k in widths}
    distance = ndimage.distance_transform_edt(~edge)
    correct = (pred.cpu().numpy() == truth) & labelled
    return {k: (int(correct[distance <= k].sum()), int(labelled[distance <= k].sum())) for k in widths}


def trimap_metrics(totals: dict[int, list[int]]) -> dict[str, float | None]:
    """{"trimap_acc_K": accuracy} from summed {k: [correct, total]} (None where no pixel was near a boundary)."""
    return {f"trimap_acc_{k}": (c / t if t else None) for k, (c, t) in totals.items()}


__all__ = ["TRIMAP_WIDTHS", "trimap_counts", "trimap_metrics"]
