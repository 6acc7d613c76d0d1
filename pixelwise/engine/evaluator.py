"""Evaluation on a dataset, by the model's task: confusion-matrix metrics (plus the ISBI scores where the
dataset declares them) for semantic models, COCO box and mask AP for instance models."""
from __future__ import annotations

import torch
import torch.nn as nn

from pixelwise.config import Config
from pixelwise.engine.tasks import build_task


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: Config, device: torch.device, *, progress: bool = True,
             tta: bool | None = None) -> dict:
    """Metrics of `model` on every sample of `dataset` (whole images, as configured in cfg.infer)."""
    return build_task(cfg, model).evaluate(model, dataset, device, progress=progress, tta=tta)
