"""pixelwise reproduce: every experiment's runs load, and a tiny budget runs, summarises and resumes."""
import json

import pytest

from pixelwise.cli import main
from pixelwise.errors import ConfigError, OutputError
from pixelwise.reproduce import EXPERIMENTS, _config, reproduce, slug
from conftest import require_dataset

TINY_UNET = ["model.args.base_width=4", "model.args.depth=2", "data.augment.crop_size=48", "data.train_split=0-1",
             "data.val_split=25", "infer.tile=128", "train.device=cpu", "train.batch_size=1"]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_run_of_every_experiment_loads(name, tmp_path):
    exp = EXPERIMENTS[name]
    names = {r.name for r in exp.runs}
    assert all(c.better in names and c.worse in names for c in exp.claims)
    for run in exp.runs:
        cfg = _config(exp, run, tmp_path / slug(run.name), 0, exp.budget, [], None)
        assert cfg.train.precision == "bf16" and cfg.train.time_limit == pytest.approx(exp.budget * run.share)
        from pixelwise.engine.tasks import build_task

        assert exp.metric in build_task(cfg).metric_names(cfg.data.dataset)


def test_default_budgets_fit_an_hour():
    assert sum(e.total() for e in EXPERIMENTS.values()) <= 3600


def test_list_and_unknown_names(capsys):
    assert main(["reproduce", "--list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in EXPERIMENTS)
    with pytest.raises(ConfigError, match="did you mean 'fcn-skips'"):
        reproduce("fcn-skip")


def test_tiny_experiment_runs_summarises_and_resumes(tmp_path, capsys):
    root = require_dataset("isbi2012").parent
    summary = reproduce("unet-weightmap", out=tmp_path, budget=2, overrides=TINY_UNET, data_root=str(root))
    folder = tmp_path / "unet-weightmap"
    assert [r["run"] for r in summary["runs"]] == [r.name for r in EXPERIMENTS["unet-weightmap"].runs]
    assert all(r["mean"] is not None and r["steps"][0] > 0 for r in summary["runs"])
    assert all(c["held"] in (True, False) for c in summary["claims"])
    assert json.loads((folder / "summary.json").read_text())["experiment"] == "unet-weightmap"
    assert "held here?" in (folder / "summary.md").read_text()
    assert "The paper's direction" in (folder / "report.html").read_text()
    # Interrupted run: its result is gone, its last.pt is there; the others are skipped.
    (folder / "valid-weight-map" / "seed0" / "result.json").unlink()
    capsys.readouterr()
    reproduce("unet-weightmap", out=tmp_path, budget=2, overrides=TINY_UNET, data_root=str(root), report=False)
    err = capsys.readouterr().err
    assert err.count("finished before") == 2 and err.count("resuming from") == 1
    assert (folder / "valid-weight-map" / "seed0" / "result.json").is_file()
    with pytest.raises(OutputError, match="longer than"):
        reproduce("unet-weightmap", out=tmp_path, budget=1, overrides=TINY_UNET, data_root=str(root))
