"""Tasks: what differs between model families, so that the run builder, the loop and inference do not branch.

A task owns every difference between families: the samples' transforms and the settings and data it
refuses, how a batch is collated and moved to the device, `loss(model, batch) -> {name: scalar}` (the
loop sums the dict), evaluation and the metrics it reports with their directions (and the ones the
report's table shows), the predictor that applies a model to images as users have them, how
predictions are written, and what an export holds: its parts, how they are put back in the model and
how an export is compared with PyTorch. The task of a run is chosen once, from the model: its registry
entry (`register_model(task=...)`) or, for a model from elsewhere, its `pixelwise_task` attribute.
Adding a family means adding one task module here, registered with @register_task.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn

from pixelwise.data import dataset_entry, list_datasets
from pixelwise.errors import TrainingError
from pixelwise.metrics import better

__all__ = ["Task", "TASKS", "build_task", "register_task", "task_class", "task_name"]

TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls
    return cls


class Task:
    """The interface every family implements (see the module docstring)."""

    name = ""
    metrics: tuple[str, ...] = ()  # reported by `evaluate` on every dataset of the task
    summary_metrics: tuple[str, ...] = ()  # the columns of the report's comparison table, where a run has them

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def metric_names(self, dataset: str) -> tuple[str, ...]:
        """The scalar metrics `evaluate` reports on the named dataset (what train.best_metric may name)."""
        return self.metrics + dataset_entry(dataset).metrics

    def better(self, metric: str, value: float, best: float | None) -> bool:
        """Whether `value` beats `best`: lower for errors and distances (metrics.LOWER_IS_BETTER), else higher."""
        return better(metric, value, best)

    def check_config(self, meta: dict) -> None:
        """Refuse settings that cannot fit the dataset (`meta`: data.dataset_meta), before the model is built."""

    def transforms(self, *, train: bool, ignore_index: int | None, crop_size: int | None, context: int):
        """The sample pipeline (image, target) -> (image, target) of a split: augmentation when `train`. `crop_size`
        is the model's input side for data.augment.crop_size and `context` the margin a valid-convolution model
        loses on each side (pixelwise.engine.run.training_crop)."""
        raise NotImplementedError

    def init_weights(self, model: nn.Module, state: dict, source: str) -> None:
        """Start from a whole-model state dict (model.init_from), every tensor fitting."""
        from pixelwise.models.weights import fit_state_dict

        fit_state_dict(model, state, what=source)

    def check(self, model: nn.Module, train_ds) -> None:
        """Refuse a model / dataset / settings combination that cannot train."""

    def prepare(self, train_ds, device: torch.device, progress: bool, val_ds=None) -> None:
        """Read what the loss needs from the training set (class weights, ...), once before training, and check
        the validation set's labels."""

    def collate(self, batch: list) -> Any:
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset, device: torch.device, *, progress: bool = True,
                 tta: bool | None = None, refine: bool = True) -> dict:
        """Metrics of `model` on `dataset`; `tta` overrides infer.tta, refine=False leaves out post-processing
        such as infer.crf (validation during training)."""
        raise NotImplementedError

    def predictor(self, model: nn.Module, device: torch.device, *, tta: bool | None = None, class_names=None,
                  refine: bool = True):
        raise NotImplementedError

    def inference_precision(self) -> tuple[str, bool]:
        """(precision, channels_last) of evaluation and prediction: infer.* where set, else train.*."""
        i, t = self.cfg.infer, self.cfg.train
        return i.precision or t.precision, t.channels_last if i.channels_last is None else i.channels_last

    def fold_example(self, model: nn.Module) -> tuple[str, tuple]:
        """(name of the submodule holding the BatchNorms, "" for all of `model`; an example input for it):
        what infer.fold_bn folds."""
        raise NotImplementedError

    def report_examples(self, model: nn.Module, dataset, device: torch.device, metrics: dict,
                        count: int = 2) -> list[tuple[str, Any]]:
        """[(caption, PIL image)] of a few validation images with their ground truth and prediction, for the
        run report (`metrics`: this model's evaluation on `dataset`)."""
        return []

    # Export (pixelwise.export, pixelwise.inference.load_exported).
    export_input = ""  # what the main exported graph takes, recorded in the file's metadata

    def export_parts(self, model: nn.Module, sample: torch.Tensor) -> dict:
        """{part name: (module, example inputs, output structure, dynamic dimensions)}, the main part first, for
        `sample` (an image as `export_sample` returns it)."""
        raise NotImplementedError

    def exported_model(self, model: nn.Module, parts: dict, graph) -> nn.Module:
        """`model` with its exported parts run by `graph(name, **RuntimeModule options)` (pixelwise.deploy.graph);
        `parts` is the file's {name: {"structure": ...}}."""
        raise NotImplementedError

    def export_state(self, model: nn.Module) -> dict:
        """{parameter name: nested lists} of the parameters that run outside the exported graphs, stored in the
        file's metadata (a CRF-as-RNN's learned CRF); {} for most models."""
        return {}

    def export_sample(self, predictor, image) -> torch.Tensor:
        """An image file or array as the exported model is checked on it."""
        raise NotImplementedError

    def calibration_inputs(self, predictor, parts: dict, images: list[torch.Tensor]) -> dict[str, list]:
        """{part name: [its inputs on one call, as float32 numpy arrays]} while `predictor` runs on `images` (as
        `export_sample` returns them): what int8 quantization calibrates each exported part on."""
        raise NotImplementedError

    def compare_export(self, reference, exported, sample: torch.Tensor, tolerance: dict) -> dict:
        """How the exported model's predictor differs from PyTorch's on `sample`: {"agrees": bool, "summary": str,
        the figures}."""
        raise NotImplementedError

    def write_predictions(self, predictor, paths, out, *, meta: dict, protected=()) -> tuple[list, str]:
        """Write the predictions of `paths` into `out`; returns (files written, what was written, in words)."""
        raise NotImplementedError

    census_unit = "pixels"  # what `pixelwise data check` counts per class

    def census(self, target, num_classes: int, ignore_index: int | None) -> tuple[Any, int | None]:
        """One sample's labels for `pixelwise data check`: (counts per class index, numpy (num_classes,); ignored
        pixels, or None where nothing is ignored)."""
        raise NotImplementedError

    def answer(self, predictor, image: torch.Tensor, result, *, meta: dict, overlay: bool = False) -> dict:
        """One prediction as JSON, what `pixelwise serve` answers: {"height", "width", "classes", the result in the
        family's form, "overlay_png" (base64) when asked}; `image` as read, `result` as the predictor returned it."""
        raise NotImplementedError


def task_class(name: str) -> type[Task]:
    """The registered task called `name`."""
    _load_tasks()
    if name not in TASKS:
        raise TrainingError(f"unknown task {name!r}, expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def task_name(cfg, model: nn.Module | None = None) -> str:
    from pixelwise.registry import model_task

    return getattr(model, "pixelwise_task", None) or model_task(cfg.model.name)


def build_task(cfg, model: nn.Module | None = None) -> Task:
    """The task of `model` (else of the registered cfg.model.name), checked against cfg.data.dataset's."""
    _load_tasks()
    name, data_task = task_name(cfg, model), dataset_entry(cfg.data.dataset).task
    if name != data_task:
        fitting = [d for d in list_datasets() if dataset_entry(d).task == name]
        raise TrainingError(f"model.name={cfg.model.name!r} is a {name} model but data.dataset={cfg.data.dataset!r} "
                            f"holds {data_task} data; use a dataset of {name} models ({', '.join(fitting) or 'none'}) "
                            f"or a {data_task} model (see `pixelwise models`)")
    return task_class(name)(cfg)


@functools.cache
def _load_tasks() -> None:
    """Import every task module of this package once, so that each registers itself (a new family is one module)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
