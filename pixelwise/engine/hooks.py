"""Hooks: everything the training loop does besides the step (detectron2's HookBase pattern).

A hook's methods receive the Trainer (its state, model, task, config and checkpointer):
  before_train     once, before the first step (and after a resume has loaded its state)
  after_forward    each micro-batch, with the loss and its parts, before backward
  after_step       after each optimizer step, with the step's logs (loss, lr, epoch, loss parts)
  after_validation after each validation, with its metrics ({} on ranks other than 0)
  after_train      once, when the loop ends without an error; called in reverse order
  close            always, last (also after an error): release what the hook holds
A hook stops the run by setting trainer.state.stopped; the loop then ends after this step's hooks.
"""
from __future__ import annotations

import csv
import signal
from pathlib import Path
from typing import Any

import torch

from pixelwise.engine import distributed as D
from pixelwise.files import atomic_write
from pixelwise.progress import Progress


class HookBase:
    def before_train(self, trainer) -> None: ...
    def after_forward(self, trainer, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None: ...
    def after_step(self, trainer, logs: dict[str, float]) -> None: ...
    def after_validation(self, trainer, metrics: dict[str, Any]) -> None: ...
    def after_train(self, trainer) -> None: ...
    def close(self, trainer) -> None: ...


class NonFiniteLoss(Exception):
    def __init__(self, loss: float, parts: dict[str, float]) -> None:
        self.loss, self.parts = loss, parts


class NonFiniteGuard(HookBase):
    """Stop before a NaN or infinite loss reaches the weights (the trainer then saves the last good state)."""

    def after_forward(self, trainer, loss, parts) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss.item(), {k: v.item() for k, v in parts.items()})


class ProgressBar(HookBase):
    """Steps done, loss and lr; time left from train.time_limit when it is set (pixelwise.progress)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def before_train(self, trainer) -> None:
        limit, clock = trainer.cfg.train.time_limit, trainer.clock
        self.bar = Progress(trainer.state.total_steps, desc="train", unit="step", initial=trainer.state.step,
                            enabled=self.enabled, time_left=(lambda: max(0.0, limit - clock.elapsed())) if limit else None)

    def after_step(self, trainer, logs) -> None:
        self.bar.update(1, loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")

    def close(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Logger(HookBase):
    """log.csv (a row per logged step or validation; `time` is the run's training seconds) and TensorBoard, on rank 0 only.

    Rows are appended; the file is rewritten (atomically) only when a column appears, such as the first
    validation's, and at the start of a resumed run, which keeps the rows up to its step."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled, self.path, self.rows, self.keys, self.tb = enabled, Path(out) / "log.csv", [], [], None

    def before_train(self, trainer) -> None:
        if not self.enabled:
            return
        step = trainer.state.step
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if _step_of(r) is not None and _step_of(r) <= step]
        for r in self.rows:
            self.keys += [k for k in r if k not in self.keys]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=step + 1 if step else None)
        except ImportError:
            self.tb = None
        self._rewrite()

    def after_step(self, trainer, logs) -> None:
        state = trainer.state
        if state.step % trainer.cfg.train.log_every == 0 or state.step == state.total_steps:
            self.log(state.step, {**logs, "time": trainer.clock.elapsed()})

    def after_validation(self, trainer, metrics) -> None:
        self.log(trainer.state.step, {"time": trainer.clock.elapsed(), **{f"val_{k}": v for k, v in metrics.items()}})

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        new = [k for k in row if k not in self.keys]
        if new:
            self.keys += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.keys).writerow(row)

    def _rewrite(self) -> None:
        def write(f) -> None:
            writer = csv.DictWriter(f, fieldnames=self.keys or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)

        atomic_write(self.path, write, what="training log", binary=False)

    def close(self, trainer) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _step_of(row: dict) -> int | None:
    """A row's step; None for a line cut short by a kill."""
    try:
        return int(row["step"])
    except (TypeError, ValueError):
        return None


class StopConditions(HookBase):
    """Ctrl-C / SIGTERM (a flag checked between steps, and after the final validation: state.interrupted; a second
    Ctrl-C stops at once), a hook's state.stop_requested, and train.time_limit (seconds of training, carried across
    resumes)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def before_train(self, trainer) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        if self._timed_out(trainer, at_least=True):
            trainer.state.stopped = "time_limit"

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def _timed_out(self, trainer, at_least: bool = False) -> bool:
        limit, elapsed = trainer.cfg.train.time_limit, trainer.clock.elapsed()
        return bool(limit) and (elapsed >= limit if at_least else elapsed > limit)

    def after_step(self, trainer, logs) -> None:
        state = trainer.state
        timed_out = self._timed_out(trainer)
        interrupted = D.any_true(self.signal is not None or state.stop_requested, trainer.info, trainer.device)
        if interrupted or timed_out:
            state.stopped = "signal" if interrupted else "time_limit"

    def after_train(self, trainer) -> None:
        # After the final validation (after_train runs in reverse order): a signal that came during it finds
        # no step left to stop, so the caller is told (pixelwise reproduce then starts no other run).
        trainer.state.interrupted = D.any_true(self.signal is not None, trainer.info, trainer.device)

    def close(self, trainer) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class PeriodicValidation(HookBase):
    """Validate every train.val_every steps (default once per epoch) and at the end of a run that was not
    interrupted or stopped early; first of all when a resumed run stopped during a validation."""

    def before_train(self, trainer) -> None:
        if trainer.validate_first:
            trainer.validate()

    def after_step(self, trainer, logs) -> None:
        state = trainer.state
        if state.stopped is None and state.step % trainer.val_every == 0 and state.step < state.total_steps:
            trainer.validate()

    def after_train(self, trainer) -> None:
        if trainer.state.stopped not in ("signal", "early_stop"):
            trainer.validate()


class BestCheckpoint(HookBase):
    """Keep best.pt: the weights of the best train.best_metric so far, in the metric's direction."""

    def after_validation(self, trainer, metrics) -> None:
        state, name = trainer.state, trainer.cfg.train.best_metric
        if trainer.info.is_main and trainer.task.better(name, metrics[name], state.best_metric):
            state.best_metric, state.best_step = metrics[name], state.step
            trainer.checkpointer.save_best()


class EarlyStopping(HookBase):
    """Stop when train.patience validations passed without a new best (FC-DenseNet section 4).
    Counted from best_step, so a resumed run agrees with an unbroken one."""

    def after_validation(self, trainer, metrics) -> None:
        state, patience = trainer.state, trainer.cfg.train.patience
        stale = (trainer.info.is_main and patience is not None
                 and state.step - (state.best_step or 0) >= patience * trainer.val_every)
        if D.any_true(stale, trainer.info, trainer.device):
            state.stopped = "early_stop"


class PeriodicCheckpoint(HookBase):
    """last.pt every train.ckpt_every steps (default once per epoch) and when the loop ends."""

    def after_step(self, trainer, logs) -> None:
        if trainer.state.stopped is None and trainer.state.step % trainer.ckpt_every == 0:
            trainer.checkpointer.save_last()

    def after_train(self, trainer) -> None:
        trainer.checkpointer.save_last()


def default_hooks(trainer, user_hooks=(), progress: bool = True) -> list[HookBase]:
    """The hooks of `pixelwise train`, in the order they run after each step."""
    main = trainer.info.is_main
    return [NonFiniteGuard(), ProgressBar(progress and main), Logger(trainer.out, main), *user_hooks,
            StopConditions(), PeriodicValidation(), BestCheckpoint(), EarlyStopping(), PeriodicCheckpoint()]
