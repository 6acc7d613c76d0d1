"""The run builder: the only code that turns a Config into objects.

`build_run(cfg)` gives the model, its task, the datasets with their transforms and the device;
`build_optimizer` and `build_scheduler` the optimisation; `build_inference(checkpoint)` a model and
predictor rebuilt from a checkpoint alone. `pixelwise train`, `eval`, `predict`, `demo` and the
benchmark scripts all build through here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from pixelwise.config import Config
from pixelwise.data import build_dataset, dataset_meta
from pixelwise.engine.predictor import geometry
from pixelwise.engine.tasks import Task, build_task
from pixelwise.errors import TrainingError
from pixelwise.models.weights import load_state_dict
from pixelwise.registry import create_model

# Model arguments naming pretrained weights; a model whose weights all come from a checkpoint leaves them out.
PRETRAINED_ARGS = ("weights", "backbone_weights")


@dataclass
class Run:
    cfg: Config
    task: Task
    model: nn.Module
    meta: dict
    datasets: dict[str, Any] = field(default_factory=dict)  # split -> dataset, transforms set

    @property
    def train_ds(self):
        return self.datasets["train"]

    @property
    def val_ds(self):
        return self.datasets["val"]


def build_run(cfg: Config, *, model: nn.Module | None = None, datasets: dict | None = None, pretrained: bool = True,
              splits: tuple[str, ...] = ("train", "val")) -> Run:
    """Model, task and datasets as cfg describes them.

    `model` replaces the one cfg.model describes (a model from elsewhere, e.g. a peer library);
    `datasets` ({split: dataset}) replaces reading cfg.data (in-memory data: their transforms are
    kept as given). pretrained=False leaves out the pretrained weights a checkpoint replaces next.
    """
    meta = dataset_meta(cfg.data)  # checks data.dataset
    task = build_task(cfg, model)
    task.check_config(meta)
    if model is None:
        model = build_model(cfg, meta, pretrained=pretrained)
        if cfg.model.init_from and pretrained:
            init_weights(cfg, model, cfg.model.init_from, task)
    if datasets is None:
        datasets = build_datasets(cfg, model, splits, task=task)
    return Run(cfg, task, model, meta, dict(datasets))


def init_weights(cfg: Config, model: nn.Module, path: str, task: Task | None = None) -> None:
    """Load model.init_from: a coarser FCN's weights for staged training, else a whole-model state dict."""
    task = task or build_task(cfg, model)
    task.init_weights(model, load_state_dict(path, what="model.init_from"), f"model.init_from {path!r}")


def build_model(cfg: Config, meta: dict | None = None, *, pretrained: bool = True) -> nn.Module:
    """The model cfg.model describes; `meta` (from data.dataset_meta) checks the number of classes.

    pretrained=False leaves out model.args.weights and backbone_weights, for a model whose weights
    all come from a checkpoint next: nothing is downloaded or read only to be overwritten.
    """
    num_classes = cfg.model.num_classes
    if meta is not None and meta["num_classes"] is not None and num_classes != meta["num_classes"]:
        raise TrainingError(
            f"model.num_classes={num_classes} but dataset {cfg.data.dataset!r} has {meta['num_classes']} classes "
            f"({', '.join(meta['class_names'])}); set model.num_classes={meta['num_classes']}"
        )
    args = {k: v for k, v in cfg.model.args.items() if pretrained or k not in PRETRAINED_ARGS}
    model = create_model(cfg.model.name, num_classes=num_classes, **args)
    if cfg.model.crf is not None:  # CRF-as-RNN: the network and the CRF layer trained with it
        from pixelwise.crf import crf_settings
        from pixelwise.models.crfasrnn import CRFasRNN

        model = CRFasRNN(model, num_classes, crf_settings(cfg.model.crf, key="model.crf")[1], cfg.data.mean,
                         cfg.data.std)
    return model


def build_datasets(cfg: Config, model: nn.Module | None = None, splits: tuple[str, ...] = ("train", "val"), *,
                   task: Task | None = None) -> dict:
    """{split: dataset} with the task's transforms: augmentation for "train", none for the others.

    With data.augment.crop_size and a model whose output is smaller than its input, training crops
    are the model's input size, cut from the mirror-extended image, so that the output covers
    crop_size target pixels with real context around them (U-Net section 2).
    """
    task, out = task or build_task(cfg, model), {}
    for split in splits:
        ds = build_dataset(cfg.data, split)
        crop, context = training_crop(model, cfg.data.augment.crop_size) if split == "train" else (None, 0)
        ds.transforms = task.transforms(train=split == "train", ignore_index=getattr(ds, "ignore_index", None),
                                        crop_size=crop, context=context)
        out[split] = ds
    return out


def training_crop(model: nn.Module | None, crop_size: int | None) -> tuple[int | None, int]:
    """(input crop side, context margin) for an output crop of `crop_size` pixels."""
    if crop_size is None or model is None:
        return crop_size, 0
    return geometry(model, crop_size)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params: list = [p for _, p in named]
    if t.bias_lr_mult != 1.0:  # FCN section 4.3: "doubled learning rate for biases"
        biases = [p for n, p in named if n.endswith(".bias")]
        others = [p for n, p in named if not n.endswith(".bias")]
        params = [{"params": others}, {"params": biases, "lr": t.lr * t.bias_lr_mult}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def lr_factor(cfg: Config, step: int, total_steps: int, steps_per_epoch: int, time_fraction: float = 0.0) -> float:
    """Multiplier of train.lr at `step`: linear warmup, then the schedule.

    `time_fraction` is the share of train.time_limit used so far: a poly schedule decays over
    whichever budget, steps or time, runs out first.
    """
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "step":
        return t.gamma ** (step // t.step_size)
    if t.schedule == "poly":
        return max(0.0, 1 - max(step / max(1, total_steps), time_fraction)) ** t.power
    if t.schedule == "exponential":  # decay per epoch, as in FC-DenseNet section 4
        return t.gamma ** (step // steps_per_epoch)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int, steps_per_epoch: int,
                    time_fraction: Callable[[], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """train.schedule as a LambdaLR; `time_fraction()` is the share of train.time_limit used so far."""
    def factor(step: int) -> float:
        return lr_factor(cfg, step, total_steps, steps_per_epoch, time_fraction())

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps_for(cfg: Config, steps_per_epoch: int) -> int:
    return cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch


__all__ = ["PRETRAINED_ARGS", "Run", "build_datasets", "build_model", "build_optimizer", "build_run", "init_weights",
           "build_scheduler", "lr_factor", "total_steps_for", "training_crop"]
