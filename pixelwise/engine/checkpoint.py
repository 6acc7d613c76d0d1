"""Checkpoints: atomic writes, loads that never unpickle code, and checks that the weights are finite.

A checkpoint is a dict of tensors and plain values (`weights_only=True` reads it):
  model, config, class_names, step, best_metric, best_step, format   every checkpoint (best.pt is only these:
                                                                     what inference and model.init_from need)
  optimizer, scheduler, scaler, rng, elapsed                         last.pt too, for an exact --resume
"""
from __future__ import annotations

import contextlib
import random
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.config import to_dict
from pixelwise.errors import CheckpointError, PixelwiseError
from pixelwise.files import atomic_write, torch_load

FORMAT = 2  # 1: pixelwise 0.1 (numpy RNG state as an array; still read); 2: every RNG state as tensors
INFERENCE_KEYS = ("model", "config", "class_names", "step", "best_metric", "best_step", "format")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` so that a crash at any moment leaves either the old file or the new one."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f), what="checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """A pixelwise checkpoint, checked; mmap=True maps the tensors instead of reading them."""
    state = torch_load(path, what="checkpoint", map_location=map_location, error=CheckpointError, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a pixelwise checkpoint (no 'model' entry); "
                              "expected a best.pt or last.pt written by pixelwise train")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise CheckpointError(f"checkpoint {str(path)!r}: its 'model' entry is a {type(weights).__name__}, not a state "
                              "dict of named tensors; expected a best.pt or last.pt written by pixelwise train")
    return state


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity."""
    return [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(state: dict[str, Any], source: str) -> None:
    bad = non_finite(state["model"])
    if bad:
        raise CheckpointError(f"checkpoint {source!r} holds NaN or infinite values in {len(bad)} tensors "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); its predictions would be "
                              "meaningless. Use an earlier checkpoint of the run")


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """Load weights, naming the checkpoint and the mismatching keys when they do not fit; refuse NaN."""
    check_finite(state, source)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {source!r} does not fit this model (was it trained with another model.name or "
            f"model.args?): {str(e).splitlines()[0]} ..."
        ) from None


def rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain values (so the checkpoint loads with weights_only=True)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    else:  # format 1
        np.random.set_state(n)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves a Trainer's last.pt (everything, for --resume) and best.pt (what inference needs) on rank 0,
    never with non-finite weights, and says where a stopped run's state is."""

    def __init__(self, trainer) -> None:
        self.trainer, self.saved_step = weakref.proxy(trainer), -1  # a proxy: no cycle with the trainer
        self.failure: str | None = None  # why the latest last.pt could not be written

    def save_last(self, *, pending_validation: bool = False) -> bool:
        """last.pt: the weights with the optimizer, scheduler, scaler, RNG and clock, for an exact --resume (once per
        step unless a validation is pending). False when the weights are not finite (nothing is written); an
        OutputError when the file cannot be written."""
        t, state = self.trainer, self.trainer.state
        if self.saved_step == state.step and not pending_validation:
            return True
        self.saved_step = state.step
        if not t.info.is_main:
            return True
        entry = self._entry()
        if entry is None:
            self.failure = "the weights are not finite"
            return False
        entry.update(optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
                     scaler=t.scaler.state_dict(), rng=rng_state(), elapsed=t.clock.elapsed(),
                     validate_first=pending_validation)
        try:
            save_checkpoint(entry, t.out / "last.pt")
        except PixelwiseError as e:
            self.saved_step, self.failure = -1, str(e)
            raise
        state.last_good, state.last_good_step, self.failure = t.out / "last.pt", state.step, None  # once on disk
        return True

    def save_best(self) -> bool:
        """best.pt: what inference needs (weights, config, class names). False when the weights are not finite."""
        t = self.trainer
        if not t.info.is_main:
            return True
        entry = self._entry()
        if entry is None:
            return False
        save_checkpoint(entry, t.out / "best.pt")
        return True

    def _entry(self) -> dict | None:
        """What both checkpoints hold, None when the weights are not finite."""
        t, state = self.trainer, self.trainer.state
        weights = t.model.state_dict()
        if non_finite(weights):
            return None
        return {"model": weights, "config": to_dict(t.cfg), "class_names": getattr(t.run.train_ds, "class_names", None),
                "step": state.step, "best_metric": state.best_metric, "best_step": state.best_step}

    def save_after_error(self, pending_validation: bool = False) -> None:
        """Try to save last.pt; a failure (a full disk, say) is kept for note(): the error that stopped the run
        is the one to report."""
        with contextlib.suppress(PixelwiseError):
            self.save_last(pending_validation=pending_validation)

    def note(self, error: BaseException | None = None) -> str:
        """Where the run's state really is after a failure (what to resume from); `error`, the one that stopped the
        run, is not repeated."""
        state = self.trainer.state
        if state.last_good is not None and state.last_good_step == state.step:
            return (f"its state at step {state.step} is saved in {state.last_good} (resume with: pixelwise train "
                    f"--resume {state.last_good})")
        why = f"step {state.step} was not saved"
        if self.failure and self.failure != str(error):
            why += f" ({self.failure})"
        if state.last_good is not None:
            return f"{why}; the last good checkpoint is {state.last_good} (step {state.last_good_step})"
        return f"{why}; no checkpoint of this run exists" if state.step else "no checkpoint was saved"
