"""Inference: a checkpoint or an exported file turned into a ready model and predictor.

`build_inference(path)` reads a pixelwise checkpoint (best.pt, last.pt) or a file of `pixelwise export`
(.onnx, .xml, .pt2), rebuilds the model from the config it stores (pixelwise.engine.run.build_run),
puts in its weights or, for an exported file, its graphs run by a runtime (pixelwise.deploy.runtimes),
and asks the model's task for the predictor. `load_predictor(path, **infer)` returns just the
predictor. `pixelwise eval`, `predict`, `export`, `report` and `demo` all load models through here.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from pixelwise.config import Config, apply_override, check_ranges, from_dict, to_dict
from pixelwise.deploy.graph import RuntimeModule
from pixelwise.deploy.runtimes import check_runtime, default_runtime, exported_format, part_path, read_metadata
from pixelwise.engine.checkpoint import load_checkpoint, load_model_weights
from pixelwise.engine.distributed import resolve_device
from pixelwise.engine.precision import compile_frozen, fold_batchnorm
from pixelwise.engine.run import PRETRAINED_ARGS, build_run
from pixelwise.engine.tasks import Task
from pixelwise.errors import CheckpointError, ConfigError
from pixelwise.files import is_trusted, trusting_pickles


@dataclass
class Inference:
    cfg: Config
    task: Task
    model: nn.Module
    meta: dict
    device: torch.device
    checkpoint: dict  # the checkpoint, or for an exported file {"config": ..., "export": its metadata}
    predictor: Any


def load_predictor(path, *, device=None, runtime: str | None = None, **infer):
    """The predictor of a pixelwise checkpoint or exported file, called on images as users have them.

    `infer` are infer.* settings (tile=256, tta=True, threshold=0.5, precision="bf16", ...). Returns a
    Predictor for a semantic model and an InstancePredictor for Mask R-CNN.
    """
    # JSON is YAML: each value reads back as given.
    overrides = [f"infer.{k}={json.dumps(v)}" for k, v in infer.items()]
    return build_inference(path, device=device, runtime=runtime, overrides=overrides).predictor


def build_inference(checkpoint, *, cfg: Config | None = None, device=None, overrides: list[str] = (),
                    tta: bool | None = None, runtime: str | None = None) -> Inference:
    """Model (weights loaded, eval mode), task and predictor of a checkpoint; the config is the checkpoint's own
    unless `cfg` is given, which must then agree with it on the model and the normalisation.

    `checkpoint` may also be a file of `pixelwise export` (.onnx, .xml, .pt2), run by `runtime`
    (pixelwise.deploy.runtimes.RUNTIMES; default: the format's own).
    """
    runtime = runtime or default_runtime(checkpoint)
    check_runtime(checkpoint, runtime)
    if exported_format(checkpoint) is not None:
        return load_exported(checkpoint, runtime, cfg=cfg, overrides=list(overrides), tta=tta)
    source = str(checkpoint)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = _config(cfg, ckpt.get("config"), source, overrides)
    device = resolve_device(cfg.train.device if device is None else str(device))
    run = build_run(cfg, pretrained=False, splits=())
    load_model_weights(run.model, ckpt, source)
    model = run.model.to(device).eval()
    if cfg.infer.fold_bn:
        model = _fold_batchnorm(model, run.task)
    if cfg.infer.compile:
        model = _compile(model, run.task)
    names = ckpt.get("class_names") or run.meta["class_names"]
    predictor = run.task.predictor(model, device, tta=tta, class_names=names)
    meta = run.meta if run.meta["class_names"] else {**run.meta, "class_names": names}  # classes known from files
    return Inference(cfg, run.task, model, meta, device, ckpt, predictor)


def load_exported(path, runtime: str, *, cfg: Config | None = None, overrides: list[str] = (),
                  tta: bool | None = None) -> Inference:
    """An Inference whose model runs the exported file `path` with `runtime`.

    The model is rebuilt from the config the file holds, without weights, and the task puts RuntimeModules
    in place of its exported parts: the Predictor's tiling and TTA, and Mask R-CNN's code around the graphs,
    run as with the PyTorch model. Exported models run on the CPU.
    """
    source = str(path)
    meta = read_metadata(path)
    cfg = _config(cfg, meta["config"], source, overrides)
    # An exported graph is fp32: the training's precision does not carry over, bf16 (OpenVINO) is asked for.
    cfg.infer.precision = cfg.infer.precision or "fp32"
    cfg.infer.channels_last = bool(cfg.infer.channels_last)
    device = torch.device("cpu")
    run = build_run(cfg, pretrained=False, splits=())
    precision, _ = run.task.inference_precision()
    files = {name: part_path(path, name, meta["main"]) for name in meta["parts"]}

    def graph(name: str, **kwargs) -> RuntimeModule:
        return RuntimeModule(files[name], runtime, precision=precision, **kwargs)

    # Vouching for the main .pt2 file (--trust-checkpoint) vouches for the parts written beside it.
    state = meta.get("state") or {}  # parameters that run outside the graphs (a CRF-as-RNN's CRF)
    _load_state(run.model, state, source)
    with trusting_pickles(*files.values()) if is_trusted(path) else contextlib.nullcontext():
        model = run.task.exported_model(run.model.eval(), meta["parts"], graph)
    left = [n for n, _ in model.named_parameters() if n not in state]
    if left:
        raise CheckpointError(f"{source!r}: the export holds no weights for {left[:3]}; export the checkpoint again "
                              "with this pixelwise version")
    names = meta.get("class_names") or run.meta["class_names"]
    predictor = run.task.predictor(model, device, tta=tta, class_names=names)
    return Inference(cfg, run.task, model, run.meta, device, {"config": meta["config"], "export": meta}, predictor)


def _load_state(model: nn.Module, state: dict, source: str) -> None:
    """An export's parameters outside its graphs, {name: nested lists}, checked against the model's."""
    own = dict(model.named_parameters())
    for name, value in state.items():
        try:
            tensor = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            tensor = None
        if name not in own or tensor is None or tensor.shape != own[name].shape:
            expected = f"a {tuple(own[name].shape)} array" if name in own else f"one of {sorted(own)[:3]}"
            raise CheckpointError(f"{source!r}: its metadata's parameter {name!r} does not fit the model it describes "
                                  f"(expected {expected}); export the checkpoint again")
        with torch.no_grad():
            own[name].copy_(tensor)


def _config(cfg: Config | None, saved, source: str, overrides) -> Config:
    """The config to run with: the stored one with `overrides` (which may not change what the weights were trained
    with), or `cfg`, which must agree with the stored one on that."""
    if cfg is not None:
        check_against_checkpoint(cfg, saved, source)
        return cfg
    cfg = config_of_checkpoint({"config": saved}, source, list(overrides))
    check_overrides(cfg, config_of_checkpoint({"config": saved}, source), source)
    return cfg


def _on_part(model: nn.Module, task: Task, change) -> nn.Module:
    """`model` with the task's network part (Task.fold_example: the whole semantic model, a CRF-as-RNN's net,
    Mask R-CNN's backbone) replaced by change(part, example input)."""
    name, example = task.fold_example(model)
    changed = change(model.get_submodule(name) if name else model, example)
    if not name:
        return changed
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, changed)
    return model


def _fold_batchnorm(model: nn.Module, task: Task) -> nn.Module:
    """infer.fold_bn: the part's BatchNorms folded into the convolution before them, checked on the example."""
    return _on_part(model, task, lambda part, example: fold_batchnorm(part, example)[0])


def _compile(model: nn.Module, task: Task) -> nn.Module:
    """infer.compile: the part compiled by torch.compile with its weights frozen as constants (inductor's
    freezing: convolutions fused with the element-wise operations after them, weights packed once). Each new
    input size compiles again."""
    return _on_part(model, task, lambda part, example: compile_frozen(part))


def config_of_checkpoint(ckpt: dict, source: str, overrides: list[str] = ()) -> Config:
    """The resolved config a checkpoint stores, with `overrides` applied."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"checkpoint {source!r} holds no config; give the recipe it was trained with as well")
    cfg = from_dict(saved, f"config stored in {source}")
    for o in overrides:
        apply_override(cfg, o)
    check_ranges(cfg, f"config stored in {source}")
    return cfg


# What a checkpoint's weights were trained with and inference must repeat (the pretrained-weight sources
# are replaced by the checkpoint, so they may differ).
_MUST_MATCH = ("model.name", "model.num_classes", "model.args", "data.mean", "data.std")
# Model args that change how the trained weights are applied, not which weights there are, so inference may set
# them: FCN-32s's output_stride (16 or 8: filter rarefaction, FCN section 3.2, which computes shift-and-stitch's
# denser scores from the same weights in one pass).
INFERENCE_ARGS = ("output_stride",)


def _inference_settings(values: dict) -> dict:
    model, data = values.get("model") or {}, values.get("data") or {}
    return {"model.name": model.get("name"), "model.num_classes": model.get("num_classes"),
            "model.args": {k: v for k, v in (model.get("args") or {}).items()
                           if k not in PRETRAINED_ARGS and k not in INFERENCE_ARGS},
            "data.mean": data.get("mean"), "data.std": data.get("std")}


def _changed(cfg: Config, saved: dict | None) -> list[str]:
    """The settings the weights were trained with that `cfg` changes, as "key=value (checkpoint: value)"."""
    if not isinstance(saved, dict):
        return []
    ours, theirs = _inference_settings(to_dict(cfg)), _inference_settings(saved)
    return [f"{k}={ours[k]!r} (checkpoint: {theirs[k]!r})" for k in _MUST_MATCH if ours[k] != theirs[k]]


def check_against_checkpoint(cfg: Config, saved: dict | None, checkpoint: str) -> None:
    differ = _changed(cfg, saved)
    if differ:
        raise CheckpointError(f"checkpoint {checkpoint!r} was trained with other settings than this config: "
                              f"{'; '.join(differ)}. Leave out the CONFIG (the checkpoint holds its own), use the "
                              "recipe it was trained with, or drop the overrides")


def check_overrides(cfg: Config, stored: Config, checkpoint: str) -> None:
    """Refuse `-o` overrides (in `cfg`) that change what the checkpoint's weights were trained with (`stored`: its
    config as it is): the model, data.mean / data.std. Inference settings (infer.*, data.root, ...) may change."""
    differ = _changed(cfg, to_dict(stored))
    if differ:
        raise CheckpointError(f"the overrides change settings checkpoint {checkpoint!r} was trained with: "
                              f"{'; '.join(differ)}; its weights only work with its own values: drop these overrides")


__all__ = ["Inference", "build_inference", "check_against_checkpoint", "check_overrides", "config_of_checkpoint",
           "load_exported", "load_predictor"]
