"""Training: a slim loop plus hooks (see pixelwise.engine.hooks).

`train(cfg)` builds the run (pixelwise.engine.run), then `Trainer.train()` runs the steps: seeded
resumable data order, optional mixed precision, gradient accumulation and clipping, the LR
schedule. Validation with the best checkpoint, early stopping, periodic and signal checkpoints,
CSV and TensorBoard logs, the time limit, the non-finite guard and the progress bar are hooks.
On any error last.pt is saved before the error is raised. Under torchrun it runs DDP; rank 0 alone
writes files.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pixelwise.config import Config, from_dict, save_config, to_dict
from pixelwise.engine import distributed as D
from pixelwise.engine.checkpoint import Checkpointer, load_checkpoint, load_model_weights, set_rng_state
from pixelwise.engine.data import SeededSamples, StepBatchSampler
from pixelwise.engine.hooks import HookBase, NonFiniteLoss, default_hooks
from pixelwise.engine.precision import autocast
from pixelwise.engine.run import Run, build_optimizer, build_run, build_scheduler, total_steps_for
from pixelwise.engine.tasks import build_task
from pixelwise.errors import CheckpointError, ConfigError, OutputError, PixelwiseError, TrainingError
from pixelwise.files import RunLock, clean_stale_temporaries, same_file, write_json

__all__ = ["HookBase", "TrainState", "Trainer", "TrainingError", "resume_changes", "train"]


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
    interrupted: bool = False  # a SIGINT / SIGTERM arrived (if during the final validation, the run is complete)
    metrics: dict = field(default_factory=dict)  # of the latest validation
    phase: str = "train"  # or "validation": what an error interrupted
    last_good: Path | None = None  # the latest last.pt written (its weights were finite)
    last_good_step: int | None = None

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


class _Clock:
    """Seconds of training, carried across resumes: train.time_limit and the poly schedule count the whole run."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.restart(elapsed)

    def restart(self, elapsed: float = 0.0) -> None:
        self.start = time.monotonic() - elapsed

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Trainer:
    """The loop: `run_step` for one micro-batch, `train` for the run, `validate` for the hooks that ask.

    Holds what the hooks read: cfg, task, model (unwrapped), state, clock, optimizer, scheduler,
    checkpointer, info (rank and world size), device, out (the run folder), val_every, ckpt_every.
    """

    def __init__(self, run: Run, *, info: D.DistInfo, device: torch.device, hooks=(), progress: bool = True) -> None:
        self.cfg, self.task, self.info, self.device, self.run = run.cfg, run.task, info, device, run
        self.out, t = Path(run.cfg.output_dir), run.cfg.train
        self.model = run.model.to(device)
        if t.channels_last:  # NHWC weights; the task gives the inputs in NHWC too
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.accum = t.grad_accum  # micro-batches per optimizer step
        batches = StepBatchSampler.steps_per_epoch_for(len(run.train_ds), t.batch_size, info.world_size)
        self.state = TrainState(steps_per_epoch=max(1, batches // self.accum))
        self.state.total_steps = total_steps_for(self.cfg, self.state.steps_per_epoch)
        clock = self.clock = _Clock()  # restarted just before the first step
        limit = t.time_limit
        # The schedule holds the clock, not the trainer: no reference cycle keeps a finished run's tensors alive.
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.state.total_steps, self.state.steps_per_epoch,
                                         lambda: clock.elapsed() / limit if limit else 0.0)
        autocast(device, t.precision)  # fp16 on the CPU is refused before any work
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        self.val_every = t.val_every or self.state.steps_per_epoch
        self.ckpt_every = t.ckpt_every or self.state.steps_per_epoch
        self.validate_first, self.elapsed_before = False, 0.0
        self.checkpointer = Checkpointer(self)
        self.hooks = default_hooks(self, hooks, progress)
        self.ddp_model, self._micro, self._sums = self.model, 0, None

    def resume(self, ckpt: dict, source: str, changes: dict) -> None:
        """Continue from a last.pt: weights, optimizer, schedule, scaler, step, best, RNG and elapsed time."""
        load_model_weights(self.model, ckpt, source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        s = self.state
        s.step, s.best_metric, s.best_step = ckpt["step"], ckpt.get("best_metric"), ckpt.get("best_step")
        s.last_good, s.last_good_step = Path(source), s.step  # finite (checked above): what a failure falls back to
        self.validate_first = bool(ckpt.get("validate_first", False))
        self.elapsed_before = ckpt.get("elapsed", 0.0)
        set_rng_state(ckpt["rng"])
        if "train.lr" in changes:
            apply_lr_change(self.optimizer, self.scheduler, *changes["train.lr"])
        if changes and self.info.is_main:
            print("resume: applied " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) +
                  f" from step {s.step} on", file=sys.stderr)

    def _loader(self) -> DataLoader:
        t, info = self.cfg.train, self.info
        sampler = StepBatchSampler(len(self.run.train_ds), batch_size=t.batch_size, seed=t.seed,
                                   total_steps=self.state.total_steps * self.accum,
                                   start_step=self.state.step * self.accum, rank=info.rank, world_size=info.world_size)
        return DataLoader(SeededSamples(self.run.train_ds, t.seed), batch_sampler=sampler, collate_fn=self.task.collate,
                          num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(t.seed))

    def call(self, event: str, *args, reverse: bool = False) -> None:
        for hook in reversed(self.hooks) if reverse else self.hooks:
            fn = getattr(hook, event, None)
            if fn is not None:
                fn(self, *args)

    def run_step(self, batch) -> dict[str, float] | None:
        """Forward, loss dict, backward; every grad_accum micro-batches, clip and step. Returns the step's logs
        after an optimizer step, else None."""
        batch = self.task.to_device(batch, self.device)
        with autocast(self.device, self.cfg.train.precision):
            parts = self.task.loss(self.ddp_model, batch)
            loss = sum(parts.values())
        self.call("after_forward", loss, parts)
        if self._micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        self._micro += 1
        # Gradient accumulation: DDP synchronises gradients on the last micro-batch only.
        sync = self._micro == self.accum or not self.info.enabled
        with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
            self.scaler.scale(loss / self.accum if self.accum > 1 else loss).backward()
        sums = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}} if len(parts) > 1 else {"loss": loss.detach()}
        self._sums = sums if self._micro == 1 else {k: self._sums[k] + v for k, v in sums.items()}
        if self._micro < self.accum:
            return None
        self._micro = 0
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        means = {k: D.mean_over_ranks(v / self.accum, self.info).item() for k, v in self._sums.items()}
        self.state.last_loss = means["loss"]
        return {"loss": means.pop("loss"), "lr": self.optimizer.param_groups[0]["lr"], "epoch": self.state.epoch, **means}

    def validate(self) -> dict:
        """Evaluate on the validation set (rank 0; no TTA: that is for final evaluations) and tell the hooks."""
        self.state.phase = "validation"
        metrics = D.on_main(self._evaluate, self.info) or {}  # an error on rank 0 stops every rank
        self.call("after_validation", metrics)
        self.model.train()
        self.state.phase = "train"
        return metrics

    def _evaluate(self) -> dict:
        metrics = self.task.evaluate(self.model, self.run.val_ds, self.device, progress=False, tta=False,
                                     refine=False)
        self.state.metrics = metrics
        write_json(self.out / "val_metrics.json", {"step": self.state.step, **metrics}, what="validation metrics")
        return metrics

    def train(self) -> TrainState:
        self.ddp_model = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        loader = self._loader()
        self.clock.restart(self.elapsed_before)  # counts from here: setup is not training
        self.model.train()
        try:
            self.call("before_train")
            for batch in loader if self.state.stopped is None else ():
                logs = self.run_step(batch)
                if logs is not None:
                    self.call("after_step", logs)
                    if self.state.stopped is not None:
                        break
            self.call("after_train", reverse=True)
        except NonFiniteLoss as e:
            self.call("close")
            self.checkpointer.save_after_error()
            terms = ", ".join(f"{k}={v:.4g}" for k, v in e.parts.items()) if len(e.parts) > 1 else ""
            raise TrainingError(
                f"loss is {e.loss}{f' ({terms})' if terms else ''} at step {self.state.step}; stopping: "
                f"{self.checkpointer.note()}. Lower train.lr, add train.warmup_steps or set train.grad_clip.") from None
        except Exception as e:
            self.call("close")
            self.checkpointer.save_after_error(pending_validation=self.state.phase == "validation")
            if isinstance(e, PixelwiseError):  # one line: what stopped the run and where its state is
                raise type(e)(f"{e}; the run stopped at step {self.state.step}: {self.checkpointer.note(e)}") from None
            if self.info.is_main:
                print(f"pixelwise train: stopped by an error at step {self.state.step}; {self.checkpointer.note()}",
                      file=sys.stderr)
            raise
        self.call("close")
        return self.state


def train(cfg: Config, *, model: nn.Module | None = None, datasets: dict | None = None, resume: str | None = None,
          hooks: tuple = (), progress: bool = True, overwrite: bool = False) -> TrainState:
    """Train as configured; returns the final state. Writes everything under cfg.output_dir.

    `model` replaces the one cfg.model describes (for models from elsewhere, e.g. a peer library);
    `datasets` ({"train": ..., "val": ...}, transforms included) replaces reading cfg.data. While it
    runs, the run folder is locked: a second training into it refuses to start. A folder that holds
    another run is refused unless `resume` is that run's checkpoint or `overwrite` starts over there
    (removing that run's files, and only those).
    """
    info, device = D.init_distributed(cfg.train.device)
    lock = D.on_main(RunLock(cfg.output_dir).acquire, info)  # a refusal stops every rank, in one line
    try:
        return _train(cfg, info, device, model, datasets, resume, hooks, progress, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, info, device, model, datasets, resume, hooks, progress, overwrite=False) -> TrainState:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    out = Path(cfg.output_dir)
    check_best_metric(cfg, model)
    ckpt, changes = None, {}
    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"checkpoint {resume!r} holds the weights only (a best.pt, for inference and "
                                  "model.init_from); resume from the run's last.pt")
        changes = resume_changes(ckpt.get("config"), cfg, resume)
    D.on_main(lambda: check_run_folder(out, resume, overwrite), info)
    run = build_run(cfg, model=model, datasets=datasets, pretrained=not resume)
    run.task.check(run.model, run.train_ds)
    run.task.prepare(run.train_ds, device, progress and info.is_main, val_ds=run.datasets.get("val"))
    D.on_main(lambda: _record_start(cfg, out, device), info)  # only once the run can start: a refusal leaves nothing
    trainer = Trainer(run, info=info, device=device, hooks=hooks, progress=progress)
    if ckpt is not None:
        trainer.resume(ckpt, resume, changes)
    if info.rank > 0:  # decorrelate dropout across ranks (rank 0's state is the checkpointed one)
        torch.manual_seed(cfg.train.seed + 1_000_003 * info.rank + trainer.state.step)
    state = trainer.train()
    if info.is_main:
        write_json(out / "train_state.json", {
            "step": state.step, "total_steps": state.total_steps, "best_metric": state.best_metric,
            "best_step": state.best_step, "stopped": state.stopped, "last_loss": state.last_loss,
            "train_seconds": trainer.clock.elapsed(),
        }, what="training state")
    D.barrier(info)
    return state


# Every file a training writes into its run folder (and `pixelwise eval` / the demo / the report beside them);
# the first five mean the folder holds a run. Any of them in a new run's folder is refused.
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "log.csv", "train_state.json", "val_metrics.json",
             "environment.json", "report.html", "metrics.json", "curves.png")


def check_run_folder(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to write a new run where a file it would write exists: continue that run (--resume), or start over
    (--overwrite, which removes those files and no others)."""
    found = [n for n in RUN_FILES if (out / n).exists() or (out / n).is_symlink()]
    if not found or (resume and same_file(Path(resume).parent, out)):
        return
    if not overwrite:
        if set(found) & set(RUN_FILES[:5]):
            step = _json(out / "train_state.json").get("step")
            what = "another run" + (f" (it ran to step {step})" if step is not None else "")
        else:
            what = "files a run writes, not from a run"
        cont = f"continue it with --resume {out / 'last.pt'}, " if (out / "last.pt").is_file() and not resume else ""
        raise OutputError(f"run folder {str(out)!r} holds {what} ({', '.join(found)}); they are left as they are. "
                          f"{cont.capitalize()}choose another --output-dir, or give --overwrite to start over there, "
                          f"replacing {', '.join(found)}")
    print(f"pixelwise train: starting over in {out}: replacing {', '.join(found)}", file=sys.stderr)
    for name in found:
        (out / name).unlink()


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _record_start(cfg: Config, out: Path, device: torch.device) -> None:
    clean_stale_temporaries(out, RUN_FILES)
    save_config(cfg, out / "config.yaml")
    write_json(out / "environment.json", environment(device), what="environment record")


def environment(device: torch.device) -> dict:
    """What a run ran on, for its report: machine, device, threads and versions."""
    import datetime
    import platform

    import torchvision

    import pixelwise

    cpu, amx = platform.processor() or platform.machine(), None
    try:
        info = Path("/proc/cpuinfo").read_text()
        amx = "amx_bf16" in info  # speed figures depend on it (bf16 matrix units)
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"started": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpu": cpu,
            "amx": amx, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pixelwise": pixelwise.__version__, "platform": platform.platform()}


def check_best_metric(cfg: Config, model: nn.Module | None = None) -> None:
    """train.best_metric must be a metric the evaluation reports (checked before the first step)."""
    names = build_task(cfg, model).metric_names(cfg.data.dataset)
    if cfg.train.best_metric not in names:
        close = difflib.get_close_matches(cfg.train.best_metric, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not reported by the {cfg.data.dataset} "
                          f"evaluation; {hint}expected one of {', '.join(names)}")


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


def config_changes(saved: dict, cfg: Config, source: str) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, cfg's value)} of the settings that differ between a stored config and cfg."""
    # Through from_dict: renamed keys take their new names and keys added since then their defaults.
    old, new, unset = _flatten(to_dict(from_dict(saved, source))), _flatten(to_dict(cfg)), _Unset()
    keys = list(new) + [k for k in old if k not in new]
    return {k: (old.get(k, unset), new.get(k, unset)) for k in keys if old.get(k, unset) != new.get(k, unset)}


def resume_changes(saved: dict | None, cfg: Config, source: str) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, new value)} of the settings that differ; ConfigError for those that cannot."""
    if saved is None:
        return {}
    changes = config_changes(saved, cfg, source)
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
