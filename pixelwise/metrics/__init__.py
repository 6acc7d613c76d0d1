"""Segmentation metrics: confusion-matrix scores (FCN section 5), ISBI 2012 Rand / VI scores, COCO AP."""
from __future__ import annotations

from pixelwise.metrics.coco import coco_evaluate, masks_to_rle, rle_to_masks
from pixelwise.metrics.confusion import ConfusionMatrix
from pixelwise.metrics.isbi import cells_from_membrane, isbi_scores, mean_isbi_scores

__all__ = ["ConfusionMatrix", "cells_from_membrane", "coco_evaluate", "isbi_scores", "masks_to_rle", "mean_isbi_scores",
           "rle_to_masks"]
