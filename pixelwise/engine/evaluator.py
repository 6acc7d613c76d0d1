"""Evaluation on a dataset: confusion-matrix metrics (plus ISBI scores on ISBI data) for semantic models,
COCO box and mask AP for instance models on instance datasets."""
from __future__ import annotations

import torch
import torch.nn as nn

from pixelwise.config import Config
from pixelwise.data import INSTANCE_DATASETS
from pixelwise.engine.instances import evaluate_instances
from pixelwise.engine.predictor import Predictor, probs_to_labels
from pixelwise.errors import DataError
from pixelwise.metrics import COCO_METRICS, ISBI_METRICS, SEMANTIC_METRICS, ConfusionMatrix, isbi_scores, mean_isbi_scores
from pixelwise.progress import progress as track


def metric_names(cfg: Config) -> tuple[str, ...]:
    """The scalar metrics `evaluate` reports for this config (what train.best_metric may name)."""
    if cfg.data.dataset in INSTANCE_DATASETS:
        return COCO_METRICS
    return SEMANTIC_METRICS + (ISBI_METRICS if cfg.data.dataset == "isbi2012" else ())


def make_predictor(model: nn.Module, cfg: Config, device: torch.device, *, tta: bool | None = None) -> Predictor:
    """The predictor cfg.infer describes; `tta` overrides infer.tta (validation during training skips it)."""
    i = cfg.infer
    return Predictor(model, device=device, tile=i.tile, overlap=i.overlap, tta=i.tta if tta is None else tta,
                     batch_size=i.batch_size, amp=cfg.train.amp)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: Config, device: torch.device, *, progress: bool = True,
             tta: bool | None = None) -> dict:
    """Metrics of `model` on every sample of `dataset` (whole images, as configured in cfg.infer)."""
    if cfg.data.dataset in INSTANCE_DATASETS:
        return evaluate_instances(model, dataset, device, batch_size=cfg.infer.batch_size, progress=progress)
    predictor = make_predictor(model, cfg, device, tta=tta)
    cm = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    isbi = cfg.data.dataset == "isbi2012"
    scores = []
    for i in track(range(len(dataset)), desc="evaluate", unit="img", enabled=progress, leave=False):
        image, target = dataset[i]
        mask = target["mask"].as_subclass(torch.Tensor)
        pred = probs_to_labels(predictor.predict_probs(image), cfg.infer.threshold)
        cm.update(pred, mask)
        if isbi:
            scores.append(isbi_scores(pred.numpy() == 1, mask.numpy() == 1))
    if cm.matrix.sum() == 0:
        raise DataError(f"every target pixel of the {len(dataset)} evaluation images is ignore_index="
                        f"{dataset.ignore_index}; expected some labelled pixels to score")
    metrics = cm.compute()
    if isbi:
        metrics["membrane_iou"] = metrics["per_class_iou"][1]
        metrics.update(mean_isbi_scores(scores))
    metrics["num_images"] = len(dataset)
    names = getattr(dataset, "class_names", None)
    if names is not None:
        metrics["class_names"] = list(names)  # the order of per_class_iou, per_class_acc and dice
    return metrics
