"""A run's files under faults: non-finite weights, errors mid-run, locks, modes, temporaries, exact resume
with a time budget, overrides on resume, the best metric's direction, slim best checkpoints."""
import csv
import os
import re
import stat
import types
from pathlib import Path

import pytest
import torch

from pixelwise.config import ConfigError, load_config
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.trainer import resume_changes, train
from pixelwise.errors import CheckpointError, DataError, TrainingError
from pixelwise.files import RunLock, clean_stale_temporaries
from pixelwise.registry import create_model

from test_trainer import StopAt, losses, tiny_config


def log_rows(run: Path) -> list[dict]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


class Poison:
    """After step `step`, sets one weight of `model` to NaN (what a diverging update does)."""

    def __init__(self, model, step):
        self.model, self.step = model, step

    def after_step(self, trainer, logs):
        state = trainer.state
        if state.step == self.step:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")

    def after_validation(self, trainer, metrics):
        pass


def test_non_finite_weights_are_never_saved_and_the_message_names_a_good_checkpoint(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, "train.ckpt_every=1", "train.val_every=100", "data.weight_map=false")
    model = create_model("unet", num_classes=2, base_width=4, depth=2)
    with pytest.raises(TrainingError) as e:
        train(cfg, model=model, hooks=(Poison(model, 2),), progress=False)
    last = tmp_path / "run" / "last.pt"
    message = str(e.value)
    assert "loss is nan at step 2" in message and "weights are not finite" in message
    assert f"{last} (step 1)" in message
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_eval_and_predict_refuse_non_finite_weights(tmp_path, data_root, capsys):
    from pixelwise.cli import main

    model = create_model("unet", num_classes=2, base_width=4, depth=2)
    weights = model.state_dict()
    next(iter(weights.values())).view(-1)[0] = float("inf")
    save_checkpoint({"model": weights}, tmp_path / "nan.pt")
    tiny = ["-o", "model.args={base_width: 4, depth: 2}", "-o", "data.val_split=25", "-o", "train.device=cpu"]
    assert main(["eval", "unet_isbi2012_cpu", "--data-root", str(data_root), "--checkpoint", str(tmp_path / "nan.pt"),
                 "--out", str(tmp_path / "m.json"), *tiny]) == 2
    assert "NaN or infinite values in 1 tensors" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    image = data_root / "isbi2012" / "train" / "image" / "00.png"
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(tmp_path / "nan.pt"), str(image),
                 "--out", str(tmp_path / "pred"), *tiny]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def _isbi_copy(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for sub in ("image", "label"):
        (root / "isbi2012" / "train" / sub).mkdir(parents=True)
        for i in (0, 1, 2, 3, 25):
            src = data_root / "isbi2012" / "train" / sub / f"{i:02d}.png"
            (root / "isbi2012" / "train" / sub / src.name).write_bytes(src.read_bytes())
    return root


def test_an_error_at_validation_saves_the_steps_before_it_and_resume_validates_first(tmp_path, data_root):
    root = _isbi_copy(data_root, tmp_path)
    bad = root / "isbi2012" / "train" / "image" / "25.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:300])  # truncated: found at the first validation
    cfg = tiny_config(tmp_path, root, "data.train_split=0-3", "train.val_every=2", "train.max_steps=4",
                      "data.weight_map=false")
    with pytest.raises(DataError, match="25.png"):
        train(cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["validate_first"] is True
    bad.write_bytes(good)
    state = train(cfg, resume=str(tmp_path / "run" / "last.pt"), progress=False)
    assert state.step == 4
    val_steps = [int(r["step"]) for r in log_rows(tmp_path / "run") if r.get("val_miou")]
    assert val_steps == [2, 4]  # the validation the error interrupted ran on resume


def test_checkpoints_follow_the_umask_and_stale_temporaries_are_removed(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"model": {"w": torch.ones(1)}}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    stale = tmp_path / ".last.pt.abc123de.tmp"  # a name without the writer's pid, left by a kill during a save
    stale.write_bytes(b"x")
    dead = tmp_path / ".last.pt.999999999.k3j_9x0q.tmp"
    dead.write_bytes(b"x")
    live = tmp_path / f".best.pt.{os.getppid()}.zz000000.tmp"  # a live writer's file stays
    live.write_bytes(b"x")
    names = ("last.pt", "best.pt")
    assert sorted(p.name for p in clean_stale_temporaries(tmp_path, names)) == sorted([stale.name, dead.name])
    assert live.exists()


def test_a_second_training_into_a_running_folder_refuses(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    with RunLock(tmp_path / "run"):
        with pytest.raises(TrainingError, match=rf"is in use by another training \(pid {os.getpid()} "):
            train(cfg, progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of the running one was touched
    state = train(tiny_config(tmp_path, data_root, "train.max_steps=1"), progress=False)  # the lock is released
    assert state.step == 1


class FakeTime:
    """A clock that moves 100 s per training step, so time-budgeted runs are reproducible."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


class Tick:
    def __init__(self, clock):
        self.clock = clock

    def after_step(self, trainer, logs):
        self.clock.now += 100.0

    def after_validation(self, trainer, metrics):
        pass


def test_resume_with_a_time_limit_continues_the_clock_and_the_schedule(tmp_path, data_root, monkeypatch):
    import pixelwise.engine.trainer as trainer

    clock = FakeTime()
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    extra = ["train.schedule=poly", "train.power=1.0", "train.max_steps=1000", "train.time_limit=650",
             "train.val_every=1000", "data.weight_map=false"]
    full = train(tiny_config(tmp_path / "a", data_root, *extra), hooks=(Tick(clock),), progress=False)
    assert full.step == 7 and full.stopped == "time_limit"  # 100 s per step: 650 s pass after the 7th step

    cfg = tiny_config(tmp_path / "b", data_root, *extra)
    train(cfg, hooks=(Tick(clock), StopAt(4)), progress=False)
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["elapsed"] == 400.0
    clock.now += 5000.0  # time between the runs does not count
    resumed = train(cfg, resume=str(tmp_path / "b" / "run" / "last.pt"), hooks=(Tick(clock),), progress=False)
    assert resumed.step == 7 and resumed.stopped == "time_limit"
    a, b = log_rows(tmp_path / "a" / "run"), log_rows(tmp_path / "b" / "run")
    assert [r["lr"] for r in a] == [r["lr"] for r in b]  # e.g. step 5 at 1 - 400/650 of the rate, not a restart
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")


def test_overrides_on_resume_apply_or_are_refused_by_name(tmp_path, data_root, capsys):
    cfg = tiny_config(tmp_path, data_root, "data.weight_map=false")
    train(cfg, hooks=(StopAt(2),), progress=False)
    last = str(tmp_path / "run" / "last.pt")
    saved = load_checkpoint(last)["config"]
    with pytest.raises(ConfigError, match=r"cannot change train.optimizer \('adam' -> 'sgd'\), train.batch_size"):
        train(tiny_config(tmp_path, data_root, "data.weight_map=false", "train.optimizer=sgd", "train.batch_size=1"),
              resume=last, progress=False)
    assert resume_changes(saved, tiny_config(tmp_path, data_root, "data.weight_map=false", "infer.tta=true"), last) \
        == {"infer.tta": (False, True)}
    state = train(tiny_config(tmp_path, data_root, "data.weight_map=false", "train.lr=0.5"), resume=last, progress=False)
    assert state.step == 6
    assert "resume: applied train.lr 0.001 -> 0.5 from step 2 on" in capsys.readouterr().err
    lrs = [float(r["lr"]) for r in log_rows(tmp_path / "run") if r.get("lr")]
    assert lrs[:2] == [0.001, 0.001] and lrs[2:] == [0.5] * 4  # constant schedule: the new rate from step 3 on


def test_the_best_metric_knows_its_direction_and_is_checked_before_the_first_step(tmp_path, data_root):
    with pytest.raises(ConfigError, match="train.best_metric='pixel_eror'.*did you mean 'pixel_error'"):
        train(tiny_config(tmp_path, data_root, "train.best_metric=pixel_eror"), progress=False)
    assert not (tmp_path / "run" / "log.csv").exists()
    state = train(tiny_config(tmp_path, data_root, "train.best_metric=pixel_error", "train.val_every=1",
                              "data.weight_map=false"), progress=False)
    errors = [(float(r["val_pixel_error"]), int(r["step"])) for r in log_rows(tmp_path / "run") if r.get("val_pixel_error")]
    assert len(errors) >= 6 and len({e for e, _ in errors}) > 1
    assert (state.best_metric, state.best_step) == min(errors)  # the lowest error, the first step reaching it


def test_best_checkpoint_holds_what_inference_needs_and_cannot_be_resumed(tmp_path, data_root):
    train(tiny_config(tmp_path, data_root, "data.weight_map=false"), progress=False)
    run = tmp_path / "run"
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert set(best) == {"format", "model", "config", "class_names", "step", "best_metric", "best_step"}
    assert {"optimizer", "scheduler", "rng", "elapsed"} <= set(last)
    assert best["class_names"] == ["cell", "membrane"]
    with pytest.raises(CheckpointError, match="holds the weights only.*resume from the run's last.pt"):
        train(tiny_config(tmp_path, data_root, "data.weight_map=false"), resume=str(run / "best.pt"), progress=False)


def test_numbers_out_of_range_are_refused_naming_the_key():
    for override, key in (("train.max_steps=-5", "train.max_steps=-5"), ("train.epochs=0", "train.epochs=0"),
                          ("train.time_limit=0", "train.time_limit=0"), ("infer.tile=-1", "infer.tile=-1"),
                          ("train.momentum=1.5", "train.momentum=1.5"), ("data.std=[0]", "data.std=[0]"),
                          ("train.class_weights=[.nan, 1.0]", "train.class_weights"), ("train.log_every=0", "train.log_every=0"),
                          ("infer.threshold=2", "infer.threshold=2.0"), ("data.label_map={300: 1}", "data.label_map")):
        with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: {key}")):
            load_config(None, [override])


def test_a_nan_stop_on_a_resumed_run_names_the_checkpoint_it_resumed_from(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, "train.ckpt_every=100", "train.val_every=100", "data.weight_map=false")
    train(cfg, hooks=(StopAt(2),), progress=False)
    last = tmp_path / "run" / "last.pt"
    model = create_model("unet", num_classes=2, base_width=4, depth=2)
    with pytest.raises(TrainingError) as e:
        train(cfg, model=model, resume=str(last), hooks=(Poison(model, 4),), progress=False)
    message = str(e.value)
    assert "loss is nan at step 4" in message and "no checkpoint was saved" not in message
    assert f"the last good checkpoint is {last} (step 2)" in message
    assert load_checkpoint(last)["step"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_refuses_a_locked_run_folder_in_one_line(tmp_path, data_root):
    import subprocess
    import sys

    run = tmp_path / "run"
    port = str(_free_port())
    args = [sys.executable, "-m", "pixelwise", "train", "unet_isbi2012_cpu", "--data-root", str(data_root),
            "--output-dir", str(run), "-o", "model.args.base_width=4", "-o", "model.args.depth=2",
            "-o", "train.device=cpu", "-o", "train.max_steps=2", "-o", "train.threads=1"]
    # What torchrun does for each of its two processes (its own agent would add its failure summary).
    envs = [dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1") for r in (0, 1)]
    with RunLock(run):
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for env in envs]
        try:
            outs = [p.communicate(timeout=90) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    errs = [err for _, err in outs]
    assert [p.returncode for p in procs] == [2, 2], errs
    refusal = f"pixelwise train: error: run folder {str(run)!r} is in use by another training (pid {os.getpid()} "
    assert errs[0].startswith(refusal) and len(errs[0].splitlines()) == 1, errs[0]
    assert "Traceback" not in errs[1] and "in use by another training" not in errs[1], errs[1]
    assert not (run / "config.yaml").exists()
