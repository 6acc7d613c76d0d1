"""Segmentation metrics: confusion-matrix scores (FCN section 5) and ISBI 2012 Rand / VI scores."""
from __future__ import annotations

from pixelwise.metrics.confusion import ConfusionMatrix
from pixelwise.metrics.isbi import cells_from_membrane, isbi_scores, mean_isbi_scores

__all__ = ["ConfusionMatrix", "cells_from_membrane", "isbi_scores", "mean_isbi_scores"]
