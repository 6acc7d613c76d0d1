"""Segmentation metrics: confusion-matrix scores (FCN section 5), ISBI 2012 Rand / VI scores, COCO AP."""
from __future__ import annotations

from pixelwise.metrics.coco import coco_evaluate, masks_to_rle, rle_to_masks, stat_names
from pixelwise.metrics.confusion import ConfusionMatrix
from pixelwise.metrics.isbi import cells_from_membrane, challenge_scores, isbi_scores, mean_isbi_scores

__all__ = ["COCO_METRICS", "ConfusionMatrix", "ISBI_METRICS", "LOWER_IS_BETTER", "SEMANTIC_METRICS", "better",
           "cells_from_membrane", "challenge_scores", "coco_evaluate", "isbi_scores", "masks_to_rle", "mean_isbi_scores", "rle_to_masks"]

# The scalar metrics each evaluation reports (the keys train.best_metric may name).
SEMANTIC_METRICS = ("pixel_acc", "mean_acc", "miou", "fwiou", "mean_dice")
# The first eight score the predicted labels (argmax); vrand_sweep and vinfo_sweep are the challenge's own scores, the
# best over its sweep of thresholds of the membrane probability (pixelwise.metrics.isbi.challenge_scores).
ISBI_METRICS = ("membrane_iou", "adapted_rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge", "vi",
                "pixel_error", "vrand_sweep", "vinfo_sweep")
COCO_METRICS = tuple(f"{kind}_{stat}" for kind in ("bbox", "segm") for stat in stat_names(100))
# Errors and distances; every other metric is a score where higher is better.
LOWER_IS_BETTER = frozenset({"adapted_rand_error", "vi", "vi_split", "vi_merge", "pixel_error"})


def better(name: str, value: float, best: float | None) -> bool:
    """Whether `value` of metric `name` improves on `best` (None: nothing to beat)."""
    if best is None:
        return True
    return value < best if name in LOWER_IS_BETTER else value > best
