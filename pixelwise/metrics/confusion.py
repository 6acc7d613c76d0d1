"""Confusion-matrix segmentation metrics (Long, Shelhamer & Darrell 2015, FCN, section 5).

With n_ij the number of pixels of class i predicted as class j, t_i = sum_j n_ij the pixels of
class i, and the sums over the classes k that are present:

    pixel accuracy      sum_i n_ii / sum_i t_i
    mean accuracy       (1/n_cl) sum_i n_ii / t_i
    mean IU             (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency weighted  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Dice (per class) is 2 n_ii / (t_i + sum_j n_ji).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


def _none_if_nan(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix, rows = ground truth, columns = prediction.

    `matrix` is a plain tensor so the engine can all-reduce it across processes before `compute()`.
    Without `device`, the matrix moves to the device of the first `update`.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes={num_classes}; expected >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._fixed_device = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch. preds, targets: integer class indices of the same shape, e.g. (B, H, W)."""
        if preds.shape != targets.shape:
            raise ValueError(
                f"ConfusionMatrix.update: preds shape {tuple(preds.shape)} != targets shape {tuple(targets.shape)};"
                " expected class indices of the same shape (take argmax over the class dimension of logits first)"
            )
        if preds.is_floating_point() or targets.is_floating_point():
            raise ValueError(
                f"ConfusionMatrix.update: got dtypes preds={preds.dtype}, targets={targets.dtype};"
                " expected integer class indices"
            )
        if not self._fixed_device and self.matrix.device != targets.device:
            self.matrix = self.matrix.to(targets.device)
        k = self.num_classes
        preds = preds.reshape(-1).to(self.matrix.device, torch.int64)
        targets = targets.reshape(-1).to(self.matrix.device, torch.int64)
        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            preds, targets = preds[keep], targets[keep]
        if targets.numel() == 0:
            return
        for name, t in (("targets", targets), ("preds", preds)):
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"ConfusionMatrix.update: {name} values span [{lo}, {hi}]; expected [0, {k})"
                    + (f" or ignore_index={self.ignore_index}" if name == "targets" else "")
                )
        self.matrix += torch.bincount(targets * k + preds, minlength=k * k).reshape(k, k)

    def compute(self) -> dict:
        """Metrics as plain Python floats (None where undefined), JSON-serialisable.

        Per-class accuracy is None for classes absent from the ground truth; per-class IoU and Dice
        are None for classes absent from both truth and prediction (a class only predicted scores 0),
        and for `ignore_index` when it is itself a class index. Means skip the None entries.
        """
        n = self.matrix.detach().cpu().double().numpy()
        total = n.sum()
        if total == 0:
            raise RuntimeError("ConfusionMatrix.compute: no pixels counted (no update, or every target pixel ignored)")
        tp = np.diag(n)
        truth = n.sum(axis=1)  # t_i
        predicted = n.sum(axis=0)  # sum_j n_ji
        union = truth + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(truth > 0, tp / truth, np.nan)
            iou = np.where(union > 0, tp / union, np.nan)
            dice = np.where(truth + predicted > 0, 2 * tp / (truth + predicted), np.nan)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            # An ignored class never has ground truth, so it has no score (only its false positives count).
            acc[self.ignore_index] = iou[self.ignore_index] = dice[self.ignore_index] = np.nan
        fwiou = float(np.nansum(truth * iou) / truth.sum())
        return {
            "pixel_acc": float(tp.sum() / total),
            "mean_acc": _mean(acc),
            "miou": _mean(iou),
            "fwiou": fwiou,
            "per_class_iou": _none_if_nan(iou),
            "per_class_acc": _none_if_nan(acc),
            "dice": _none_if_nan(dice),
            "mean_dice": _mean(dice),
        }
