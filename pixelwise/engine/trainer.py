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
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pixelwise.config import Config, save_config, to_dict
from pixelwise.data import INSTANCE_DATASETS, build_dataset, dataset_meta
from pixelwise.data.stats import class_frequencies, median_frequency_weights
from pixelwise.data.transforms import build_transforms
from pixelwise.engine import distributed as D
from pixelwise.engine.checkpoint import load_checkpoint, load_model_weights, rng_state, save_checkpoint, set_rng_state
from pixelwise.engine.data import SeededSamples, StepBatchSampler, collate
from pixelwise.engine.evaluator import evaluate
from pixelwise.engine.instances import collate_instances, instances_to_device
from pixelwise.engine.predictor import forward_aligned, geometry
from pixelwise.losses import cross_entropy
from pixelwise.models.weights import fit_state_dict, load_state_dict
from pixelwise.registry import create_model


class TrainingError(RuntimeError):
    pass


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
    history: list[dict] = field(default_factory=list)

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
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

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
    args = {k: v for k, v in cfg.model.args.items() if pretrained or k not in PRETRAINED_ARGS}
    return create_model(cfg.model.name, num_classes=num_classes, **args)


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


def resolve_class_weights(cfg: Config, train_ds, progress: bool = False) -> torch.Tensor | None:
    """train.class_weights as a (K,) tensor; "median_frequency" counts the training masks (FCN section 4.3)."""
    spec, k = cfg.train.class_weights, cfg.model.num_classes
    if spec is None:
        return None
    if spec == "median_frequency":
        counts = class_frequencies(train_ds, k, train_ds.ignore_index, progress=progress)
        return torch.as_tensor(median_frequency_weights(counts), dtype=torch.float32)
    if len(spec) != k:
        raise TrainingError(f"train.class_weights has {len(spec)} values, expected one per class ({k})")
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


def train(cfg: Config, *, model: nn.Module | None = None, resume: str | None = None, hooks: tuple[Hook, ...] = (),
          progress: bool = True) -> TrainState:
    """Train as configured; returns the final state. Writes everything under cfg.output_dir.

    `model` replaces the one cfg.model describes (for models from elsewhere, e.g. a peer library).
    """
    info, device = D.init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    if model is None:
        model = build_model(cfg, dataset_meta(cfg.data), pretrained=not resume)
        if cfg.model.init_from and not resume:
            init_weights(model, cfg.model.init_from)
    train_ds, val_ds = build_datasets(cfg, model)
    instances = cfg.data.dataset in INSTANCE_DATASETS
    check_task(cfg, model, train_ds)
    model = model.to(device)
    cropped = cfg.data.augment.crop_size is not None
    optimizer = build_optimizer(model, cfg)
    sampler_probe = StepBatchSampler(len(train_ds), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                     total_steps=0, world_size=info.world_size)
    accum = cfg.train.grad_accum  # micro-batches per optimizer step
    state = TrainState(steps_per_epoch=max(1, sampler_probe.steps_per_epoch // accum))
    state.total_steps = total_steps_for(cfg, state.steps_per_epoch)
    clock: dict[str, float] = {}  # training start, for schedules that follow train.time_limit

    def time_fraction() -> float:
        limit = cfg.train.time_limit
        return (time.monotonic() - clock["start"]) / limit if limit and "start" in clock else 0.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, state.total_steps, state.steps_per_epoch, time_fraction()))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        load_model_weights(model, ckpt, resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.step, state.best_metric, state.best_step = ckpt["step"], ckpt.get("best_metric"), ckpt.get("best_step")
        set_rng_state(ckpt["rng"])
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
    class_weights = None if instances else resolve_class_weights(cfg, train_ds, progress=progress and info.is_main)
    if class_weights is not None:
        class_weights = class_weights.to(device)
    val_every = cfg.train.val_every or state.steps_per_epoch
    ckpt_every = cfg.train.ckpt_every or state.steps_per_epoch

    saved_step = -1

    def checkpoint(name: str) -> None:
        nonlocal saved_step
        if name == "last.pt":
            if saved_step == state.step:
                return
            saved_step = state.step
        if not info.is_main:
            return
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": state.step, "best_metric": state.best_metric,
            "best_step": state.best_step, "rng": rng_state(), "config": to_dict(cfg),
            "class_names": getattr(train_ds, "class_names", None),
        }, out / name)

    def validate() -> bool:
        """Validate, keep best.pt; True when train.patience validations passed without a new best."""
        metrics = None
        if info.is_main:
            metrics = evaluate(model, val_ds, cfg, device, progress=False, tta=False)  # TTA only for final evals
            value = metrics.get(cfg.train.best_metric)
            if value is None:
                raise TrainingError(f"train.best_metric={cfg.train.best_metric!r} is not a validation metric; "
                                    f"choose one of {', '.join(k for k, v in metrics.items() if isinstance(v, float))}")
            if state.best_metric is None or value > state.best_metric:
                state.best_metric, state.best_step = value, state.step
                checkpoint("best.pt")
            logger.log(state.step, {f"val_{k}": v for k, v in metrics.items()})
            (out / "val_metrics.json").write_text(json.dumps({"step": state.step, **metrics}, indent=2))
        D.barrier(info)
        for h in hooks:
            h.after_validation(state, metrics or {})
        # Early stopping (FC-DenseNet section 4). Counted from best_step, so a resumed run agrees.
        patience = cfg.train.patience
        stale = info.is_main and patience is not None and state.step - (state.best_step or 0) >= patience * val_every
        return D.any_true(stale, info, device)

    # With a time limit the bar counts seconds, so its ETA is the real one.
    limit = cfg.train.time_limit
    bar = tqdm(total=int(limit) if limit else state.total_steps, initial=0 if limit else state.step,
               desc="train", unit="s" if limit else "step", dynamic_ncols=True, disable=not (progress and info.is_main))
    start = clock["start"] = time.monotonic()
    model.train()
    with _StopRequests() as stop:
        micro, step_loss, step_parts = 0, None, {}
        for images, targets in loader:
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
                last = out / "last.pt"
                terms = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                raise TrainingError(
                    f"loss is {loss.item()}{f' ({terms})' if terms else ''} at step {state.step}; stopping. "
                    f"The last good checkpoint is {last} "
                    f"({'present' if last.exists() else 'none saved yet'}). Lower train.lr, add train.warmup_steps "
                    f"or set train.grad_clip.")
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
            bar.update(min(int(time.monotonic() - start), int(limit)) - bar.n if limit else 1)
            bar.set_postfix(step=state.step, loss=f"{state.last_loss:.4f}", lr=f"{logs['lr']:.2e}")
            if state.step % cfg.train.log_every == 0 or state.step == state.total_steps:
                logger.log(state.step, logs)
            for h in hooks:
                h.after_step(state, logs)

            timed_out = cfg.train.time_limit is not None and time.monotonic() - start > cfg.train.time_limit
            interrupted = D.any_true(stop.signal is not None or state.stop_requested, info, device)
            if interrupted or timed_out:
                state.stopped = "signal" if interrupted else "time_limit"
                break
            if state.step % val_every == 0 and state.step < state.total_steps and validate():
                state.stopped = "early_stop"
                break
            if state.step % ckpt_every == 0:
                checkpoint("last.pt")
    bar.close()
    checkpoint("last.pt")
    if state.stopped not in ("signal", "early_stop"):
        validate()
    logger.close()
    if info.is_main:
        (out / "train_state.json").write_text(json.dumps({
            "step": state.step, "total_steps": state.total_steps, "best_metric": state.best_metric,
            "best_step": state.best_step, "stopped": state.stopped, "last_loss": state.last_loss,
            "train_seconds": time.monotonic() - start,
        }, indent=2))
    D.barrier(info)
    return state

