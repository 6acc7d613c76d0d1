import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixelwise.config import load_config
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.data import StepBatchSampler
from pixelwise.engine.run import lr_factor
from pixelwise.engine.trainer import train

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path, data_root, *extra):
    """A U-Net small enough to train in seconds on real ISBI crops."""
    return load_config(None, [
        f"output_dir={tmp_path / 'run'}", f"data.root={data_root}", "data.train_split=0-7", "data.val_split=25",
        "model.args={base_width: 4, depth: 2}", "data.augment.crop_size=48", "data.augment.elastic=true",
        "data.augment.rot90=true", "data.weight_map=true", "train.optimizer=adam", "train.lr=1e-3",
        "train.batch_size=2", "train.max_steps=6", "train.log_every=1", "train.val_every=3",
        "train.device=cpu", "infer.tile=64", *extra,
    ])


def losses(run: Path) -> list[float]:
    with (run / "log.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


class StopAt:
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, logs):
        state = trainer.state
        if state.step == self.step:
            state.stop_requested = True

    def after_validation(self, trainer, metrics):
        pass


def test_resume_continues_exactly(tmp_path, data_root):
    full = train(tiny_config(tmp_path / "a", data_root), progress=False)
    cfg = tiny_config(tmp_path / "b", data_root)
    part = train(cfg, hooks=(StopAt(4),), progress=False)
    assert part.step == 4 and part.stopped == "signal"
    resumed = train(cfg, resume=str(tmp_path / "b" / "run" / "last.pt"), progress=False)
    assert full.step == resumed.step == 6
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert len(a) == len(b) == 6
    assert a == b  # bit-identical losses, step for step
    wa = load_checkpoint(tmp_path / "a" / "run" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_folder_contents_and_best_checkpoint(tmp_path, data_root):
    state = train(tiny_config(tmp_path, data_root, "train.best_metric=membrane_iou"), progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "last.pt", "best.pt", "val_metrics.json", "train_state.json"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    best = load_checkpoint(run / "best.pt")
    assert best["step"] == state.best_step and best["best_metric"] == state.best_metric
    with (run / "log.csv").open() as f:
        vals = [float(r["val_membrane_iou"]) for r in csv.DictReader(f) if r.get("val_membrane_iou")]
    assert len(vals) == 2 and state.best_metric == max(vals)


def test_bf16_autocast_on_cpu_and_gradient_clipping(tmp_path, data_root):
    state = train(tiny_config(tmp_path, data_root, "train.precision=bf16", "train.grad_clip=0.5", "train.max_steps=2",
                              "train.optimizer=rmsprop"), progress=False)
    assert state.step == 2 and torch.isfinite(torch.tensor(state.last_loss))


def test_lr_schedules():
    cfg = load_config(None, ["train.schedule=step", "train.step_size=10", "train.gamma=0.5", "train.warmup_steps=4"])
    assert [lr_factor(cfg, s, 100, 5) for s in (0, 3, 4, 10, 25)] == [0.25, 1.0, 1.0, 0.5, 0.25]
    cfg = load_config(None, ["train.schedule=poly", "train.power=1.0"])
    assert lr_factor(cfg, 50, 100, 5) == pytest.approx(0.5)
    assert lr_factor(cfg, 10, 100, 5, time_fraction=0.75) == pytest.approx(0.25)  # the time budget runs out first
    cfg = load_config(None, ["train.schedule=exponential", "train.gamma=0.995"])
    assert lr_factor(cfg, 12, 100, 5) == pytest.approx(0.995**2)


def test_step_sampler_shards_the_global_batch():
    single = list(StepBatchSampler(10, batch_size=4, seed=3, total_steps=5))
    r0 = list(StepBatchSampler(10, batch_size=2, seed=3, total_steps=5, rank=0, world_size=2))
    r1 = list(StepBatchSampler(10, batch_size=2, seed=3, total_steps=5, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == single
    resumed = list(StepBatchSampler(10, batch_size=4, seed=3, total_steps=5, start_step=3))
    assert resumed == single[3:]
    # 2 steps per epoch; keys encode the epoch so augmentation differs between epochs
    assert all(k < 10 for k in single[0] + single[1]) and all(10 <= k < 20 for k in single[2])
    with pytest.raises(ValueError, match="larger than the training set"):
        StepBatchSampler(3, batch_size=2, seed=0, total_steps=1, world_size=2)


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"model": {}, "x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, data_root):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "pixelwise", "train", str(REPO / "configs" / "unet_isbi2012_cpu.yaml"),
            "--data-root", str(data_root), "--output-dir", str(run), "-o", "model.args.base_width=4",
            "-o", "model.args.depth=2", "-o", "data.augment.crop_size=48", "-o", "train.max_steps=100000",
            "-o", "train.log_every=1", "-o", "train.threads=1", "-o", "train.batch_size=1",
            "-o", "data.train_split=0-7", "-o", "data.val_split=25-28"]  # slices the bundled sample has too
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / "log.csv").exists() and len(losses(run)) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not log two steps in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    step = load_checkpoint(run / "last.pt")["step"]
    assert step >= 2
    state = json.loads((run / "train_state.json").read_text())
    assert state["stopped"] == "signal" and state["step"] == step


@pytest.mark.slow  # 17 s: two processes; the default suite is at its 10-minute limit
def test_distributed_two_processes_match_one_process(tmp_path, data_root):
    # Dropout off: its masks depend on how the batch is split, in any DDP implementation.
    common = ["--data-root", str(data_root), "-o", "model.args={base_width: 4, depth: 2, dropout: 0.0}", "-o",
              "data.augment.crop_size=48", "-o", "train.max_steps=3", "-o", "train.optimizer=sgd", "-o",
              "train.lr=0.05", "-o", "train.momentum=0.9", "-o", "data.val_split=25", "-o", "infer.tile=64",
              "-o", "train.threads=1", "-o", "data.train_split=0-7", "-o", "train.log_every=1",
              "-o", "train.precision=fp32"]  # bf16 rounds the two processes' sums differently
    cfg = str(REPO / "configs" / "unet_isbi2012_cpu.yaml")
    one = subprocess.run([sys.executable, "-m", "pixelwise", "train", cfg, "--output-dir", str(tmp_path / "one"),
                          "-o", "train.batch_size=4", *common], env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "pixelwise", "train", cfg, "--output-dir", str(tmp_path / "two"), "-o",
                          "train.batch_size=2", *common], env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained 3 steps") == 1 and "n/a" not in two.stdout  # only rank 0 speaks
    a = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)  # float summation order differs
    la, lb = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(la) == 3 and la[0] != la[-1]  # it trained
    assert la == pytest.approx(lb, rel=1e-5)


def test_valid_unet_trains_on_input_sized_crops_with_context(tmp_path, data_root):
    from pixelwise import create_model
    from pixelwise.engine.run import build_datasets, training_crop
    from pixelwise.engine.tasks.semantic import center_crop_like

    model = create_model("unet", base_width=4, depth=2)
    crop, margin = training_crop(model, 48)
    out = model.output_size(crop)
    assert out >= 48 and crop - out == 2 * margin and margin > 0
    train_ds = build_datasets(tiny_config(tmp_path, data_root, "data.augment.elastic=false"), model)["train"]
    image, target = train_ds[0]
    assert image.shape[-2:] == (crop, crop) and target["mask"].shape == (crop, crop)
    logits = model(image[None])
    cropped = center_crop_like({k: v[None] for k, v in target.items()}, logits)
    assert cropped["mask"].shape[-2:] == logits.shape[-2:] == (out, out)
    assert torch.equal(cropped["mask"][0], target["mask"][margin:margin + out, margin:margin + out])


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, data_root):
    # No batch norm, no dropout, no weight map: 2 micro-batches of 1 give the gradient of 1 batch of 2.
    common = ["model.name=unet_padded", "model.args={base_width: 4, depth: 2, dropout: 0.0}",
              "data.weight_map=false", "train.max_steps=3", "train.val_every=100"]
    a = tiny_config(tmp_path / "a", data_root, *common, "train.batch_size=2")
    b = tiny_config(tmp_path / "b", data_root, *common, "train.batch_size=1", "train.grad_accum=2")
    train(a, progress=False)
    train(b, progress=False)
    la, lb = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert len(la) == len(lb) == 3
    assert la == pytest.approx(lb, rel=1e-5)
    wa = load_checkpoint(tmp_path / "a" / "run" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_bias_learning_rate_multiplier(tmp_path, data_root):
    from pixelwise.engine.run import build_model, build_optimizer

    cfg = tiny_config(tmp_path, data_root, "train.bias_lr_mult=2", "train.lr=0.01")
    model = build_model(cfg)
    groups = build_optimizer(model, cfg).param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.02]
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    assert {id(p) for p in groups[1]["params"]} == biases


def test_config_rejects_out_of_range_values():
    from pixelwise.config import ConfigError

    for override, match in (("train.grad_accum=0", "grad_accum"), ("train.loss_sampling_p=0", "loss_sampling_p"),
                            ("train.loss_sampling_p=1.5", "probability"), ("train.class_weights=median", "median_frequency")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])


def test_early_stopping_on_the_validation_metric(tmp_path, data_root):
    # A zero learning rate never improves on the first validation: with patience 2 the run stops
    # at the second validation after it.
    cfg = tiny_config(tmp_path, data_root, "train.lr=1e-12", "train.max_steps=20", "train.val_every=2",
                      "train.patience=2", "train.optimizer=sgd")
    state = train(cfg, progress=False)
    assert state.stopped == "early_stop" and state.best_step == 2 and state.step == 6
