"""Each training hook on its own, against a stand-in trainer (no model, no data)."""
import math
import signal
import types

import pytest
import torch

from pixelwise.config import Config
from pixelwise.engine.distributed import DistInfo
from pixelwise.engine.hooks import (BestCheckpoint, EarlyStopping, Logger, NonFiniteGuard, NonFiniteLoss,
                                    PeriodicCheckpoint, PeriodicValidation, ProgressBar, StopConditions)
from pixelwise.engine.tasks.semantic import SemanticTask
from pixelwise.engine.trainer import TrainState


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def elapsed(self):
        return self.t


class Saver:
    def __init__(self):
        self.saved = []

    def save_last(self, **kw):
        self.saved.append("last.pt")

    def save_best(self):
        self.saved.append("best.pt")


def fake_trainer(tmp_path=None, **train):
    cfg = Config()
    for k, v in train.items():
        setattr(cfg.train, k, v)
    t = types.SimpleNamespace(cfg=cfg, state=TrainState(total_steps=10, steps_per_epoch=5), clock=Clock(),
                              info=DistInfo(), device=torch.device("cpu"), task=SemanticTask(cfg), val_every=2,
                              ckpt_every=3, checkpointer=Saver(), validate_first=False, out=tmp_path, validations=[])
    t.validate = lambda: t.validations.append(t.state.step)
    return t


def steps(hook, trainer, n, logs=None):
    for _ in range(n):
        trainer.state.step += 1
        hook.after_step(trainer, logs or {"loss": 1.0, "lr": 0.1})


def test_non_finite_guard_stops_before_backward():
    guard, t = NonFiniteGuard(), fake_trainer()
    guard.after_forward(t, torch.tensor(1.0), {"a": torch.tensor(1.0)})
    with pytest.raises(NonFiniteLoss) as e:
        guard.after_forward(t, torch.tensor(math.nan), {"a": torch.tensor(math.nan), "b": torch.tensor(0.5)})
    assert math.isnan(e.value.loss) and e.value.parts["b"] == 0.5


def test_periodic_validation_every_val_every_then_once_at_the_end():
    hook, t = PeriodicValidation(), fake_trainer()
    steps(hook, t, 10)
    assert t.validations == [2, 4, 6, 8]  # not at the last step: after_train validates then
    hook.after_train(t)
    assert t.validations == [2, 4, 6, 8, 10]
    for stopped in ("signal", "early_stop"):
        t.state.stopped = stopped
        hook.after_train(t)
    assert len(t.validations) == 5
    t.validate_first = True
    hook.before_train(t)
    assert len(t.validations) == 6


def test_best_checkpoint_follows_each_metrics_direction():
    hook, t = BestCheckpoint(), fake_trainer(best_metric="pixel_error")
    for step, value in [(2, 0.3), (4, 0.2), (6, 0.25)]:
        t.state.step = step
        hook.after_validation(t, {"pixel_error": value})
    assert (t.state.best_metric, t.state.best_step, t.checkpointer.saved) == (0.2, 4, ["best.pt", "best.pt"])
    hook, t = BestCheckpoint(), fake_trainer(best_metric="miou")
    for step, value in [(2, 0.3), (4, 0.2)]:
        t.state.step = step
        hook.after_validation(t, {"miou": value})
    assert (t.state.best_metric, t.state.best_step) == (0.3, 2)


def test_early_stopping_after_patience_validations_without_a_new_best():
    hook, t = EarlyStopping(), fake_trainer(patience=2)
    t.state.best_step, t.state.step = 2, 4
    hook.after_validation(t, {})
    assert t.state.stopped is None
    t.state.step = 6
    hook.after_validation(t, {})
    assert t.state.stopped == "early_stop"
    hook, t = EarlyStopping(), fake_trainer(patience=None)
    t.state.step = 100
    hook.after_validation(t, {})
    assert t.state.stopped is None


def test_periodic_checkpoint_every_ckpt_every_and_at_the_end():
    hook, t = PeriodicCheckpoint(), fake_trainer()
    steps(hook, t, 7)
    assert t.checkpointer.saved == ["last.pt", "last.pt"]  # steps 3 and 6
    t.state.stopped = "signal"
    steps(hook, t, 2)  # step 9 is a multiple, but the run is stopping: after_train saves
    hook.after_train(t)
    assert t.checkpointer.saved == ["last.pt"] * 3


def test_stop_conditions_time_limit_hook_request_and_signals():
    hook, t = StopConditions(), fake_trainer(time_limit=10.0)
    hook.before_train(t)
    try:
        steps(hook, t, 1)
        assert t.state.stopped is None
        t.clock.t = 10.5
        steps(hook, t, 1)
        assert t.state.stopped == "time_limit"
        t.state.stopped, t.clock.t = None, 0.0
        t.state.stop_requested = True
        steps(hook, t, 1)
        assert t.state.stopped == "signal"
        t.state.stopped, t.state.stop_requested = None, False
        signal.raise_signal(signal.SIGTERM)  # handled: a flag, checked after the step
        steps(hook, t, 1)
        assert t.state.stopped == "signal"
    finally:
        hook.close(t)
    assert signal.getsignal(signal.SIGTERM) is not hook._handle
    spent = fake_trainer(time_limit=10.0)
    spent.clock.t = 10.0
    StopConditions().before_train(spent)  # a resumed run whose budget is used up does not step
    assert spent.state.stopped == "time_limit"


def test_a_signal_during_the_final_validation_is_reported_after_it():
    hook, validation, t = StopConditions(), PeriodicValidation(), fake_trainer()
    t.validate = lambda: signal.raise_signal(signal.SIGTERM)  # arrives while the final validation runs
    hook.before_train(t)
    try:
        steps(hook, t, 10)
        for h in (validation, hook):  # after_train's reverse order: StopConditions after PeriodicValidation
            h.after_train(t)
    finally:
        hook.close(t)
    assert t.state.stopped is None and t.state.interrupted  # the run is complete, and its caller must stop
    quiet = fake_trainer()
    StopConditions().after_train(quiet)
    assert not quiet.state.interrupted


def test_logger_writes_rows_and_a_resume_drops_the_ones_it_will_redo(tmp_path):
    t = fake_trainer(tmp_path, log_every=2)
    hook = Logger(tmp_path, enabled=True)
    hook.before_train(t)
    steps(hook, t, 4, {"loss": 0.5, "lr": 0.1, "note": "not a number"})
    hook.after_validation(t, {"miou": 0.7, "per_class_iou": [0.1, 0.2]})
    hook.close(t)
    text = (tmp_path / "log.csv").read_text().splitlines()
    # time: the run's training seconds (the fake clock says 0.0)
    assert text[0] == "step,loss,lr,time,val_miou" and text[1:] == ["2,0.5,0.1,0.0,", "4,0.5,0.1,0.0,", "4,,,0.0,0.7"]
    t.state.step = 2  # resuming from step 2
    hook = Logger(tmp_path, enabled=True)
    hook.before_train(t)
    hook.close(t)
    assert (tmp_path / "log.csv").read_text().splitlines()[1:] == ["2,0.5,0.1,0.0,"]
    Logger(tmp_path / "other", enabled=False).before_train(t)  # ranks other than 0 write nothing
    assert not (tmp_path / "other").exists()


def test_progress_bar_counts_steps_in_plain_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("PIXELWISE_PROGRESS_EVERY", "0")
    hook, t = ProgressBar(enabled=True), fake_trainer()
    hook.before_train(t)
    steps(hook, t, 3)
    hook.close(t)
    err = capsys.readouterr().err
    assert "3/10" in err and "loss=1.0000" in err and "\r" not in err


def test_logger_appends_rows_and_rewrites_only_for_a_new_column(tmp_path, monkeypatch):
    import pixelwise.engine.hooks as hooks

    rewrites = []
    real = hooks.atomic_write
    monkeypatch.setattr(hooks, "atomic_write", lambda *a, **k: (rewrites.append(1), real(*a, **k))[1])
    t = fake_trainer(tmp_path, log_every=1)
    logger = Logger(tmp_path, enabled=True)
    logger.before_train(t)
    steps(logger, t, 50)
    assert len(rewrites) == 2  # the empty file at the start, then the loss and lr columns at step 1
    logger.after_validation(t, {"miou": 0.5})
    assert len(rewrites) == 3
    logger.close(t)
    with (tmp_path / "log.csv").open("a") as f:
        f.write("5")  # a line cut short by a kill: "5" parses, so cut inside a number
        f.write("x,0.")
    t.state.step = 50
    resumed = Logger(tmp_path, enabled=True)
    resumed.before_train(t)
    resumed.close(t)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert len(lines) == 1 + 50 + 1 and lines[-1] == "50,,,0.0,0.5"
