"""`pixelwise demo` on a machine that has never seen the datasets: no data root, an empty home. It runs on the
ISBI 2012 sample bundled with pixelwise, says so in its first line, and learns."""
import json
import os
import subprocess
import sys
import time

import pytest

from pixelwise.cli import resolve_config
from pixelwise.config import load_config
from pixelwise.demo import SAMPLE_OVERRIDES

# A short run for the test, counted in steps so that it learns the same on a slow machine as on a fast one
# (60 steps: about 20 s on 2 cores; the 40 s time limit used before gave about 90 steps on a slow afternoon, and
# this machine's speed varied 2x within a day); the demo's own budget is 150 s.
SHORT = ["-o", "train.max_steps=60", "-o", "train.time_limit=600", "-o", "train.val_every=60", "-o",
         "train.ckpt_every=60"]


def untrained_scores(overrides: list[str]) -> dict:
    """The demo's model with its initial weights, evaluated as the demo evaluates."""
    import torch

    from pixelwise.engine.run import build_datasets, build_run

    cfg = load_config(resolve_config("unet_isbi2012_cpu"), [*SAMPLE_OVERRIDES, *overrides, "train.device=cpu"])
    torch.manual_seed(cfg.train.seed)
    run = build_run(cfg, splits=("val",))
    val = build_datasets(cfg, run.model, splits=("val",))["val"]
    return run.task.evaluate(run.model.eval(), val, torch.device("cpu"), progress=False)


def test_demo_without_any_data_runs_on_the_bundled_sample_and_learns(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PIXELWISE_DATA"}
    env.update(HOME=str(home), PIXELWISE_PROGRESS_EVERY="10")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pixelwise", "demo", "--out", str(tmp_path / "demo"), *SHORT],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("pixelwise demo: running on the small ISBI 2012 sample bundled with pixelwise")
    assert "not ISBI 2012 scores" in first and "BENCHMARKS.md" in first and "train-volume.tif" in first
    assert seconds < 300, seconds  # the whole demo, on this budget, far within the 5 minutes its own takes at most
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    before = untrained_scores([o for o in SHORT if o != "-o"])
    assert metrics["membrane_iou"] > before["membrane_iou"] + 0.15, (metrics["membrane_iou"], before["membrane_iou"])
    assert metrics["pixel_error"] < before["pixel_error"] - 0.05, (metrics["pixel_error"], before["pixel_error"])
    assert not (home / ".cache" / "pixelwise").exists()  # no download, no dataset cache


@pytest.mark.slow  # the demo's own budget: at most 5 minutes on 2 cores
def test_demo_on_the_sample_finishes_within_five_minutes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PIXELWISE_DATA"}
    env["HOME"] = str(tmp_path)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pixelwise", "demo", "--sample", "--out", str(tmp_path / "demo")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 300
