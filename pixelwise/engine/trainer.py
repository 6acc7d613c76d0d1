"""Training: thin functions plus hooks.

`train(cfg)` builds everything from the config, then runs the step loop: seeded resumable data
order, optional mixed precision, gradient clipping, LR schedule, periodic validation keeping the
best checkpoint, CSV and TensorBoard logs, a progress bar with ETA, checkpoints written atomically,
and a checkpoint saved before exiting on Ctrl-C or SIGTERM. Under torchrun it runs DDP; rank 0
alone writes files.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pixelwise.config import Config, save_config, to_dict
from pixelwise.data import INSTANCE_DATASETS, build_dataset, dataset_meta
from pixelwise.data.stats import class_frequencies, label_census, median_frequency_weights
from pixelwise.data.transforms import build_transforms
from pixelwise.engine import distributed as D
from pixelwise.engine.checkpoint import (load_checkpoint, load_model_weights, non_finite, rng_state, save_checkpoint,
                                        set_rng_state)
from pixelwise.engine.data import SeededSamples, StepBatchSampler, collate
from pixelwise.engine.evaluator import evaluate, metric_names
from pixelwise.engine.instances import collate_instances, instances_to_device
from pixelwise.engine.predictor import forward_aligned, geometry
from pixelwise.errors import CheckpointError, ConfigError, DataError, PixelwiseError, TrainingError
from pixelwise.files import RunLock, atomic_write, clean_stale_temporaries, write_json
from pixelwise.losses import cross_entropy
from pixelwise.models.weights import fit_state_dict, load_state_dict
from pixelwise.metrics import better
from pixelwise.progress import Progress
from pixelwise.registry import create_model, model_arguments


@dataclass
class TrainState:
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 1
    best_metric: float | None = None
    best_step: int | None = None
    last_loss: float = math.nan
    stopped: str | None = None  # "signal", "time_limit", "early_stop" or None
    stop_requested: bool = False  # a hook may set it: the loop saves and stops as on SIGTERM
    metrics: dict = field(default_factory=dict)  # of the latest validation
    last_good: Path | None = None  # the latest last.pt written (its weights were finite)
    last_good_step: int | None = None

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


class Hook(Protocol):
    def after_step(self, state: TrainState, logs: dict[str, float]) -> None: ...
    def after_validation(self, state: TrainState, metrics: dict[str, Any]) -> None: ...


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


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type == "cpu":
        raise TrainingError("train.amp=fp16 needs a GPU; on the CPU use train.amp=bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _StopRequests:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the loop can save and exit cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Logger:
    """CSV (one row per logged step or validation) and TensorBoard, on rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int) -> None:
        self.enabled, self.path, self.rows = enabled, out / "log.csv", []
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # keep the rows up to the resumed step, drop the ones to be redone
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            self.tb = None
        self._flush()

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        self._flush()

    def _flush(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]

        def write(f) -> None:
            writer = csv.DictWriter(f, fieldnames=keys or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)

        atomic_write(self.path, write, what="training log", binary=False)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_datasets(cfg: Config, model: nn.Module | None = None):
    """Train and val datasets with their transforms.

    With data.augment.crop_size and a model whose output is smaller than its input, training crops
    are the model's input size, cut from the mirror-extended image, so that the output covers
    crop_size target pixels with real context around them (U-Net section 2).
    """
    train_ds, val_ds = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    crop, context = training_crop(model, cfg.data.augment.crop_size)
    train_ds.transforms = build_transforms(cfg.data, train=True, ignore_index=getattr(train_ds, "ignore_index", None),
                                           crop_size=crop, context=context)
    val_ds.transforms = build_transforms(cfg.data, train=False, ignore_index=getattr(val_ds, "ignore_index", None))
    return train_ds, val_ds


def training_crop(model: nn.Module | None, crop_size: int | None) -> tuple[int | None, int]:
    """(input crop side, context margin) for an output crop of `crop_size` pixels."""
    if crop_size is None or model is None:
        return crop_size, 0
    in_size, margin = geometry(model, crop_size)
    return in_size, margin


def center_crop_like(targets: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Crop (B,H,W) targets to the centre region that (B,K,h,w) logits predict."""
    h, w = logits.shape[-2:]
    out = {}
    for k, t in targets.items():
        top, left = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
        out[k] = t[..., top : top + h, left : left + w]
    return out


def init_weights(model: nn.Module, path: str) -> None:
    """Load model.init_from: a coarser FCN's weights for staged training, else a whole-model state dict."""
    state = load_state_dict(path, what="model.init_from")
    if hasattr(model, "load_staged"):
        model.load_staged(state, source=f"model.init_from {path!r}")
    else:
        fit_state_dict(model, state, what=f"model.init_from {path!r}")


PRETRAINED_ARGS = ("weights", "backbone_weights")


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
    if meta is not None and cfg.data.dataset not in INSTANCE_DATASETS:
        check_channels(cfg, meta)
    args = {k: v for k, v in cfg.model.args.items() if pretrained or k not in PRETRAINED_ARGS}
    return create_model(cfg.model.name, num_classes=num_classes, **args)


def check_channels(cfg: Config, meta: dict) -> None:
    """The model's input channels, data.mean / data.std and the dataset's images must agree."""
    channels, name = meta["in_channels"], cfg.data.dataset
    if len(cfg.data.mean) not in (1, channels):
        raise ConfigError(f"data.mean has {len(cfg.data.mean)} values but the images of {name!r} have {channels} "
                          f"channel{'s' if channels > 1 else ''}; expected 1 value or {channels}")
    model_channels = cfg.model.args.get("in_channels", model_arguments(cfg.model.name).get("in_channels"))
    if isinstance(model_channels, int) and model_channels != channels:
        raise ConfigError(f"model.args.in_channels={model_channels} but the images of {name!r} have {channels} "
                          f"channel{'s' if channels > 1 else ''}; set model.args.in_channels={channels}")


def check_task(cfg: Config, model: nn.Module, train_ds) -> None:
    """Instance datasets go with detection models (one class per object category, no semantic loss
    options), semantic datasets with semantic models."""
    detector = hasattr(model, "roi_heads")
    if cfg.data.dataset not in INSTANCE_DATASETS:
        if detector:
            raise TrainingError(f"model.name={cfg.model.name!r} detects object instances; data.dataset="
                                f"{cfg.data.dataset!r} is semantic. Use one of {', '.join(INSTANCE_DATASETS)}")
        return
    if not detector:
        raise TrainingError(f"data.dataset={cfg.data.dataset!r} holds object instances; model.name={cfg.model.name!r} "
                            "is a semantic model. Use a Mask R-CNN model (see `pixelwise models`)")
    k = model.num_classes
    if k != train_ds.num_classes - 1:
        raise TrainingError(f"model.num_classes={k} but dataset {cfg.data.dataset!r} has {train_ds.num_classes - 1} "
                            f"object classes (background excluded); set model.num_classes={train_ds.num_classes - 1}")
    t = cfg.train
    for key, value, default in (("class_weights", t.class_weights, None), ("loss_sampling_p", t.loss_sampling_p, None),
                                ("loss_reduction", t.loss_reduction, "mean")):
        if value != default:
            raise TrainingError(f"train.{key}={value!r} applies to semantic models; Mask R-CNN's losses are the paper's")


# Keys a resumed run may change; they apply from the next step on. Any other change would make the
# continuation a different run from the one the checkpoint belongs to.
# The pretrained weights a model starts from are not read on resume (the checkpoint replaces them).
RESUMABLE = ("output_dir", "data.root", "data.num_workers", "train.max_steps", "train.epochs", "train.time_limit",
             "train.val_every", "train.ckpt_every", "train.log_every", "train.patience", "train.threads",
             "train.device", "train.deterministic", "train.lr", "train.grad_clip", "model.init_from",
             "model.args.weights", "model.args.backbone_weights", "infer.*")


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


class _Unset:
    def __repr__(self) -> str:
        return "unset"


def resume_changes(saved: dict | None, cfg: Config, source: str) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, new value)} of the settings that differ; ConfigError for those that cannot."""
    if saved is None:
        return {}
    old, new, unset = _flatten(saved), _flatten(to_dict(cfg)), _Unset()
    keys = list(new) + [k for k in old if k not in new]
    changes = {k: (old.get(k, unset), new.get(k, unset)) for k in keys if old.get(k, unset) != new.get(k, unset)}
    refused = [k for k in changes if k not in RESUMABLE and not k.startswith("infer.")]
    if refused:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise ConfigError(
            f"--resume {source}: cannot change {listed} when resuming, since the run would no longer continue "
            f"the one in the checkpoint. Resuming may change only {', '.join(RESUMABLE)}. To train on from these "
            f"weights with other settings, start a new run with -o model.init_from={source}")
    return changes


def apply_lr_change(optimizer: torch.optim.Optimizer, scheduler, old: float, new: float) -> None:
    """A new train.lr on resume: every group's base rate scales by new / old; the schedule continues."""
    ratio = new / old
    scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio


def check_best_metric(cfg: Config) -> None:
    names = metric_names(cfg)
    if cfg.train.best_metric not in names:
        close = difflib.get_close_matches(cfg.train.best_metric, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not reported by the {cfg.data.dataset} "
                          f"evaluation; {hint}expected one of {', '.join(names)}")


def check_training_labels(train_ds, num_classes: int, progress: bool):
    """Read the training masks once (when the dataset lists them) and refuse labels that cannot train.

    Returns the (N, K) class counts (for median-frequency weights), or None for datasets without mask files.
    """
    paths = getattr(train_ds, "mask_paths", None)
    if not paths:
        return None
    counts, ignored = label_census(train_ds, num_classes, train_ds.ignore_index, progress=progress)
    if num_classes >= 2 and counts[:, 1:].sum() == 0:
        ig = train_ds.ignore_index
        only = f"class 0 and ignore_index={ig}" if ignored.sum() else "class 0"
        fix = (f" If {ig} marks the foreground (binary masks stored as 0/{ig}), map it to class 1 with "
               f"-o data.label_map={{{ig}: 1}} (or rewrite the masks with 1 for foreground)") if ignored.sum() else ""
        raise DataError(f"the {len(paths)} training masks (for example {str(paths[0])!r}) hold only {only}: no pixel "
                        f"of the other {num_classes - 1} classes would be learnt, so training would be wrong.{fix}")
    return counts


def resolve_class_weights(cfg: Config, train_ds, progress: bool = False, counts=None) -> torch.Tensor | None:
    """train.class_weights as a (K,) tensor; "median_frequency" counts the training masks (FCN section 4.3)."""
    spec, k = cfg.train.class_weights, cfg.model.num_classes
    if spec is None:
        return None
    if spec == "median_frequency":
        if counts is None:
            counts = class_frequencies(train_ds, k, train_ds.ignore_index, progress=progress)
        return torch.as_tensor(median_frequency_weights(counts), dtype=torch.float32)
    if len(spec) != k:
        raise ConfigError(f"train.class_weights has {len(spec)} values, expected one per class ({k})")
    return torch.tensor(spec, dtype=torch.float32)


def compute_loss(cfg: Config, logits, targets: dict[str, torch.Tensor], class_weights: torch.Tensor | None,
                 ignore_index: int) -> torch.Tensor:
    """Cross-entropy with the configured weights, loss sampling and reduction. `logits` may be a
    {"out", "aux"} dict (auxiliary head), whose aux term is weighted by train.aux_loss_weight."""
    t = cfg.train

    def ce(x: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x, targets["mask"], weight_map=targets.get("weight"), class_weights=class_weights,
                             ignore_index=ignore_index, sample_p=t.loss_sampling_p, reduction=t.loss_reduction)

    if isinstance(logits, dict):
        return ce(logits["out"]) + t.aux_loss_weight * ce(logits["aux"])
    return ce(logits)


def total_steps_for(cfg: Config, steps_per_epoch: int) -> int:
    return cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch


class _Clock:
    """Seconds of training, carried across resumes: train.time_limit and the poly schedule count the whole run."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.start = time.monotonic() - elapsed

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class _NonFiniteLoss(Exception):
    def __init__(self, loss: float, parts: dict[str, float]) -> None:
        self.loss, self.parts = loss, parts


def train(cfg: Config, *, model: nn.Module | None = None, resume: str | None = None, hooks: tuple[Hook, ...] = (),
          progress: bool = True) -> TrainState:
    """Train as configured; returns the final state. Writes everything under cfg.output_dir.

    `model` replaces the one cfg.model describes (for models from elsewhere, e.g. a peer library).
    While it runs, the run folder is locked: a second training into it refuses to start.
    """
    info, device = D.init_distributed(cfg.train.device)
    lock = RunLock(cfg.output_dir).acquire() if info.is_main else None
    try:
        return _train(cfg, info, device, model, resume, hooks, progress)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, info, device, model, resume, hooks, progress) -> TrainState:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    out = Path(cfg.output_dir)
    meta = dataset_meta(cfg.data)  # checks data.dataset
    check_best_metric(cfg)
    ckpt, changes = None, {}
    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"checkpoint {resume!r} holds the weights only (a best.pt, for inference and "
                                  "model.init_from); resume from the run's last.pt")
        changes = resume_changes(ckpt.get("config"), cfg, resume)
    if info.is_main:
        clean_stale_temporaries(out)
        save_config(cfg, out / "config.yaml")

    if model is None:
        model = build_model(cfg, meta, pretrained=not resume)
        if cfg.model.init_from and not resume:
            init_weights(model, cfg.model.init_from)
    train_ds, val_ds = build_datasets(cfg, model)
    instances = cfg.data.dataset in INSTANCE_DATASETS
    check_task(cfg, model, train_ds)
    counts = None if instances else check_training_labels(train_ds, cfg.model.num_classes, progress and info.is_main)
    model = model.to(device)
    cropped = cfg.data.augment.crop_size is not None
    optimizer = build_optimizer(model, cfg)
    sampler_probe = StepBatchSampler(len(train_ds), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                     total_steps=0, world_size=info.world_size)
    accum = cfg.train.grad_accum  # micro-batches per optimizer step
    state = TrainState(steps_per_epoch=max(1, sampler_probe.steps_per_epoch // accum))
    state.total_steps = total_steps_for(cfg, state.steps_per_epoch)
    limit = cfg.train.time_limit
    clock = _Clock()  # started again just before the first step

    def time_fraction() -> float:
        return clock.elapsed() / limit if limit else 0.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, state.total_steps, state.steps_per_epoch, time_fraction()))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    validate_first = False
    if ckpt is not None:
        load_model_weights(model, ckpt, resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.step, state.best_metric, state.best_step = ckpt["step"], ckpt.get("best_metric"), ckpt.get("best_step")
        validate_first = bool(ckpt.get("validate_first", False))
        set_rng_state(ckpt["rng"])
        if "train.lr" in changes:
            apply_lr_change(optimizer, scheduler, *changes["train.lr"])
        if changes and info.is_main:
            print("resume: applied " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) +
                  f" from step {state.step} on", file=sys.stderr)
    if info.rank > 0:  # decorrelate dropout across ranks (rank 0's state is the checkpointed one)
        torch.manual_seed(cfg.train.seed + 1_000_003 * info.rank + state.step)

    ddp_model = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = StepBatchSampler(len(train_ds), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                               total_steps=state.total_steps * accum, start_step=state.step * accum, rank=info.rank,
                               world_size=info.world_size)
    loader = DataLoader(SeededSamples(train_ds, cfg.train.seed), batch_sampler=sampler,
                        collate_fn=collate_instances if instances else collate,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    logger = _Logger(out, info.is_main, state.step)
    class_weights = None if instances else resolve_class_weights(cfg, train_ds, progress and info.is_main, counts)
    if class_weights is not None:
        class_weights = class_weights.to(device)
    val_every = cfg.train.val_every or state.steps_per_epoch
    ckpt_every = cfg.train.ckpt_every or state.steps_per_epoch
    class_names = getattr(train_ds, "class_names", None)
    saved_step = -1

    def checkpoint(name: str, *, pending_validation: bool = False) -> bool:
        """Save last.pt (everything, for --resume) or best.pt (what inference needs); never non-finite weights."""
        nonlocal saved_step
        if name == "last.pt":
            if saved_step == state.step and not pending_validation:
                return True
            saved_step = state.step
        if not info.is_main:
            return True
        weights = model.state_dict()
        if non_finite(weights):
            return False
        entry = {"model": weights, "config": to_dict(cfg), "class_names": class_names, "step": state.step,
                 "best_metric": state.best_metric, "best_step": state.best_step}
        if name == "last.pt":
            entry.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                         rng=rng_state(), elapsed=clock.elapsed(), validate_first=pending_validation)
            state.last_good, state.last_good_step = out / name, state.step
        save_checkpoint(entry, out / name)
        return True

    def validate() -> bool:
        """Validate, keep best.pt; True when train.patience validations passed without a new best."""
        metrics = None
        if info.is_main:
            metrics = evaluate(model, val_ds, cfg, device, progress=False, tta=False)  # TTA only for final evals
            value = metrics[cfg.train.best_metric]
            if better(cfg.train.best_metric, value, state.best_metric):
                state.best_metric, state.best_step = value, state.step
                checkpoint("best.pt")
            state.metrics = metrics
            logger.log(state.step, {f"val_{k}": v for k, v in metrics.items()})
            write_json(out / "val_metrics.json", {"step": state.step, **metrics}, what="validation metrics")
        D.barrier(info)
        for h in hooks:
            h.after_validation(state, metrics or {})
        # Early stopping (FC-DenseNet section 4). Counted from best_step, so a resumed run agrees.
        patience = cfg.train.patience
        stale = info.is_main and patience is not None and state.step - (state.best_step or 0) >= patience * val_every
        return D.any_true(stale, info, device)

    def saved_note() -> str:
        """Where the run's state is after a failure (what to resume from)."""
        if state.last_good is not None and state.last_good_step == state.step:
            return f"its state at step {state.step} is saved in {state.last_good} (resume with: pixelwise train --resume {state.last_good})"
        if state.last_good is not None:
            return (f"the weights are no longer finite, so they were not saved; the last good checkpoint is "
                    f"{state.last_good} (step {state.last_good_step})")
        return "no checkpoint was saved" + (" (the weights are not finite)" if state.step else "")

    def save_after_error(pending_validation: bool = False) -> None:
        try:
            checkpoint("last.pt", pending_validation=pending_validation)
        except PixelwiseError as e:  # a full disk, say: the error that stopped the run is the one to report
            print(f"pixelwise train: could not save last.pt: {e}", file=sys.stderr)

    clock = _Clock(ckpt.get("elapsed", 0.0) if ckpt else 0.0)  # counts from here: setup above is not training
    bar = Progress(state.total_steps, desc="train", unit="step", initial=state.step, enabled=progress and info.is_main,
                   time_left=(lambda: max(0.0, limit - clock.elapsed())) if limit else None)
    model.train()
    phase = "train"
    try:
        with _StopRequests() as stop:
            if validate_first:  # the run stopped during this step's validation
                phase = "validation"
                validate()
                model.train()
            if limit and clock.elapsed() >= limit:
                state.stopped = "time_limit"
            micro, step_loss, step_parts = 0, None, {}
            for images, targets in (loader if state.stopped is None else ()):
                phase = "train"
                parts: dict[str, torch.Tensor] = {}
                if instances:
                    images, targets = instances_to_device(images, targets, device, non_blocking=True)
                else:
                    images = images.to(device, non_blocking=True)
                    targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
                with _autocast(device, cfg.train.amp):
                    if instances:  # Mask R-CNN: the sum of its RPN and RoI head losses (section 3, L = Lcls + Lbox + Lmask)
                        parts = ddp_model(images, targets, detect=False)["losses"]
                        loss = sum(parts.values())
                    else:
                        if cropped:  # crops carry their context: the output predicts their centre
                            logits = ddp_model(images)
                            targets = center_crop_like(targets, logits["out"] if isinstance(logits, dict) else logits)
                        else:
                            logits = forward_aligned(ddp_model, images)
                        loss = compute_loss(cfg, logits, targets, class_weights, train_ds.ignore_index)
                if not torch.isfinite(loss):
                    raise _NonFiniteLoss(loss.item(), {k: v.item() for k, v in parts.items()})
                if micro == 0:
                    optimizer.zero_grad(set_to_none=True)
                micro += 1
                # Gradient accumulation: DDP synchronises gradients on the last micro-batch only.
                sync = micro == accum or not info.enabled
                with contextlib.nullcontext() if sync else ddp_model.no_sync():
                    scaler.scale(loss / accum if accum > 1 else loss).backward()
                step_loss = loss.detach() if micro == 1 else step_loss + loss.detach()
                step_parts = {k: v.detach() + (step_parts[k] if micro > 1 else 0) for k, v in parts.items()}
                if micro < accum:
                    continue
                loss, micro = step_loss / accum, 0
                if cfg.train.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1
                state.last_loss = D.mean_over_ranks(loss.detach(), info).item()
                logs = {"loss": state.last_loss, "lr": optimizer.param_groups[0]["lr"], "epoch": state.epoch,
                        **{k: D.mean_over_ranks(v / accum, info).item() for k, v in step_parts.items()}}
                bar.update(1, loss=f"{state.last_loss:.4f}", lr=f"{logs['lr']:.2e}")
                if state.step % cfg.train.log_every == 0 or state.step == state.total_steps:
                    logger.log(state.step, logs)
                for h in hooks:
                    h.after_step(state, logs)

                timed_out = limit is not None and clock.elapsed() > limit
                interrupted = D.any_true(stop.signal is not None or state.stop_requested, info, device)
                if interrupted or timed_out:
                    state.stopped = "signal" if interrupted else "time_limit"
                    break
                if state.step % val_every == 0 and state.step < state.total_steps:
                    phase = "validation"
                    if validate():
                        state.stopped = "early_stop"
                        break
                    phase = "train"
                if state.step % ckpt_every == 0:
                    checkpoint("last.pt")
        bar.close()
        checkpoint("last.pt")
        if state.stopped not in ("signal", "early_stop"):
            phase = "validation"
            validate()
    except _NonFiniteLoss as e:
        bar.close()
        save_after_error()
        terms = ", ".join(f"{k}={v:.4g}" for k, v in e.parts.items())
        raise TrainingError(
            f"loss is {e.loss}{f' ({terms})' if terms else ''} at step {state.step}; stopping: {saved_note()}. "
            "Lower train.lr, add train.warmup_steps or set train.grad_clip.") from None
    except Exception:
        bar.close()
        save_after_error(pending_validation=phase == "validation")
        if info.is_main:
            print(f"pixelwise train: stopped by an error at step {state.step}; {saved_note()}", file=sys.stderr)
        raise
    finally:
        logger.close()
    if info.is_main:
        write_json(out / "train_state.json", {
            "step": state.step, "total_steps": state.total_steps, "best_metric": state.best_metric,
            "best_step": state.best_step, "stopped": state.stopped, "last_loss": state.last_loss,
            "train_seconds": clock.elapsed(),
        }, what="training state")
    D.barrier(info)
    return state
