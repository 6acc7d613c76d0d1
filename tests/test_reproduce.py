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
        from pixelwise.config import apply_override
        from pixelwise.data import dataset_meta
        from pixelwise.engine.tasks import build_task

        if run.evaluate is not None:  # not trained: its source's config with its own (infer.*) overrides
            assert run.share == 0 and run.evaluate in [r.name for r in exp.runs[: exp.runs.index(run)]]
            source = next(r for r in exp.runs if r.name == run.evaluate)
            cfg = _config(exp, source, tmp_path / slug(run.name), 0, exp.budget, [], None)
            for override in run.overrides:
                apply_override(cfg, override)
        else:
            cfg = _config(exp, run, tmp_path / slug(run.name), 0, exp.budget, [], None)
            assert cfg.train.precision == "bf16"
            if run.images_of is None:
                assert cfg.train.time_limit == pytest.approx(exp.budget * run.share)
            else:  # equal epochs: no time limit (max_steps is set from the source's steps)
                assert cfg.train.time_limit is None and run.share == 0
                assert run.images_of in [r.name for r in exp.runs[: exp.runs.index(run)]]
        task = build_task(cfg)
        task.check_config(dataset_meta(cfg.data))
        assert exp.metric in task.metric_names(cfg.data.dataset)


def test_default_budgets_fit_45_minutes_each_and_about_3_hours_together():
    from pixelwise.reproduce import SEEDS

    assert SEEDS >= 3
    from pixelwise.reproduce import default_names

    assert all(e.total() * SEEDS <= 45 * 60 for e in EXPERIMENTS.values() if e.paper)
    assert EXPERIMENTS["camvid-recipe"].total() * SEEDS == 3600  # the recipes' own budget: an hour, run by name
    assert sum(EXPERIMENTS[n].total() for n in default_names()) * SEEDS <= 3.3 * 3600  # the papers' claims (--all)
    assert {"camvid-losses", "camvid-augment", "camvid-recipe"} <= set(EXPERIMENTS) - set(default_names())


def test_list_and_unknown_names(capsys):
    assert main(["reproduce", "--list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in EXPERIMENTS)
    with pytest.raises(ConfigError, match="did you mean 'fcn-skips'"):
        reproduce("fcn-skip")


def test_tiny_experiment_runs_summarises_and_resumes(tmp_path, capsys):
    root = require_dataset("isbi2012").parent
    summary = reproduce("unet-weightmap", out=tmp_path, budget=2, seeds=2, overrides=TINY_UNET, data_root=str(root))
    folder = tmp_path / "unet-weightmap"
    assert [r["run"] for r in summary["runs"]] == [r.name for r in EXPERIMENTS["unet-weightmap"].runs]
    assert all(r["mean"] is not None and len(r["values"]) == 2 and min(r["steps"]) > 0 for r in summary["runs"])
    assert all(c["verdict"] in ("held", "reversed", "inconclusive") and len(c["interval"]) == 2 and c["seeds"] == 2
               for c in summary["claims"])
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["experiment"] == "unet-weightmap" and saved["metric"] == "vrand_sweep"
    assert {"vrand_sweep", "vrand_sweep_threshold", "adapted_rand_error"} <= set(
        json.loads((folder / "valid-weight-map" / "seed1" / "result.json").read_text())["metrics"])
    assert "| verdict |" in (folder / "summary.md").read_text()
    page = (folder / "report.html").read_text()
    assert "The paper's claims" in page and "training curves of every seed" in page
    # Interrupted run: its result is gone, its last.pt is there; the others are skipped.
    (folder / "valid-weight-map" / "seed0" / "result.json").unlink()
    capsys.readouterr()
    reproduce("unet-weightmap", out=tmp_path, budget=2, seeds=2, overrides=TINY_UNET, data_root=str(root),
              report=False)
    err = capsys.readouterr().err
    assert err.count("finished before") == 5 and err.count("resuming from") == 1
    assert (folder / "valid-weight-map" / "seed0" / "result.json").is_file()
    with pytest.raises(OutputError, match="longer than"):
        reproduce("unet-weightmap", out=tmp_path, budget=1, seeds=2, overrides=TINY_UNET, data_root=str(root))
    summary = (folder / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match=r"valid-no-weight-map/seed0' holds a run made with other settings: "
                                          r"train.lr \(0.001 there, 0.01 now\)"):
        reproduce("unet-weightmap", out=tmp_path, budget=2, seeds=2, overrides=[*TINY_UNET, "train.lr=0.01"],
                  data_root=str(root))
    assert (folder / "summary.json").read_bytes() == summary


def test_a_rerun_with_other_settings_is_refused_naming_the_run_folder_and_the_keys(tmp_path):
    from pixelwise.config import save_config

    exp = EXPERIMENTS["unet-weightmap"]
    folder = tmp_path / exp.name / slug(exp.runs[0].name) / "seed0"
    folder.mkdir(parents=True)
    save_config(_config(exp, exp.runs[0], folder, 0, 2.0, ["train.lr=0.5", "train.batch_size=1"], None),
                folder / "config.yaml")
    (folder / "result.json").write_text(json.dumps({"budget": 2.0}))
    for finished in (True, False):  # a finished run, then an interrupted one
        with pytest.raises(ConfigError, match=rf"run folder '{folder}' .*other settings: train.batch_size \(1 there, "
                                              rf"2 now\), train.lr \(0.5 there, 0.001 now\).*another --out"):
            reproduce(exp.name, out=tmp_path, budget=2, seeds=1, data_root=str(tmp_path / "data"), progress=False,
                      report=False)
        (folder / "result.json").unlink(missing_ok=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_sigterm_during_a_final_validation_keeps_that_run_and_starts_no_other(tmp_path, monkeypatch, capsys):
    import signal

    from pixelwise.engine.tasks.semantic import SemanticTask

    root = require_dataset("isbi2012").parent
    evaluate = SemanticTask.evaluate

    def terminated_meanwhile(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(SemanticTask, "evaluate", terminated_meanwhile)
    overrides = [a for o in TINY_UNET for a in ("-o", o)]
    assert main(["reproduce", "unet-weightmap", "--out", str(tmp_path), "--budget", "1", "--seeds", "1",
                 "--data-root", str(root), *overrides]) == 130
    folder = tmp_path / "unet-weightmap"
    first = folder / slug(EXPERIMENTS["unet-weightmap"].runs[0].name) / "seed0"
    assert json.loads((first / "result.json").read_text())["metrics"]["adapted_rand_error"] >= 0
    assert sorted(p.name for p in folder.iterdir()) == [first.parent.name]  # no other run, no summary


def test_a_run_interrupted_before_its_first_checkpoint_starts_over_with_the_same_settings(tmp_path, capsys):
    from pixelwise.config import save_config

    root = require_dataset("isbi2012").parent
    exp = EXPERIMENTS["unet-weightmap"]
    folder = tmp_path / exp.name / slug(exp.runs[0].name) / "seed0"
    folder.mkdir(parents=True)
    cfg = _config(exp, exp.runs[0], folder, 0, 1.0, [*TINY_UNET, f"data.root={root}"], None)
    save_config(cfg, folder / "config.yaml")
    (folder / "log.csv").write_text("step,loss\n1,0.7\n")  # killed before its first last.pt
    summary = reproduce(exp.name, out=tmp_path, budget=1, seeds=1, overrides=TINY_UNET, data_root=str(root),
                        report=False)
    assert all(r["steps"][0] > 0 for r in summary["runs"]) and (folder / "result.json").is_file()
    assert "finished before" not in capsys.readouterr().err


def test_runs_that_evaluate_another_with_a_crf_and_crf_as_rnn_fine_tuning(tmp_path, monkeypatch, capsys):
    """The shape of the `crf` experiment on a tiny U-Net: a run scored with infer.crf is not trained (it evaluates
    its source's last.pt, once), and a CRF-as-RNN run starts from the plain run."""
    from pixelwise.reproduce import Claim, Experiment, Planned

    root = require_dataset("isbi2012").parent
    crf = "{iterations: 2, w1: 3}"
    plain = ("data.weight_map=false",)
    exp = Experiment("tiny-crf", "tiny", "test", "miou", 2, claims=(Claim("U-Net + CRF", "U-Net", "+"),), runs=(
        Planned("U-Net", "unet_isbi2012_cpu", plain),
        Planned("U-Net + CRF", "unet_isbi2012_cpu", (f"infer.crf={crf}",), share=0, evaluate="U-Net"),
        Planned("CRF-as-RNN", "unet_isbi2012_cpu", (*plain, f"model.crf={crf}"), share=0.5, init_from="U-Net")))
    monkeypatch.setitem(EXPERIMENTS, exp.name, exp)
    summary = reproduce(exp.name, out=tmp_path, budget=2, seeds=1, overrides=TINY_UNET, data_root=str(root),
                        report=False)
    runs = {r["run"]: r for r in summary["runs"]}
    assert runs["U-Net + CRF"]["steps"] == runs["U-Net"]["steps"] and runs["U-Net + CRF"]["budget"] == 0
    assert runs["U-Net + CRF"]["mean"] != runs["U-Net"]["mean"]  # the CRF changed the labels
    folder = tmp_path / exp.name
    evaluated = json.loads((folder / "u-net-crf" / "seed0" / "result.json").read_text())
    assert evaluated["evaluates"] == str(folder / "u-net" / "seed0") and "trimap_acc_2" in evaluated["metrics"]
    assert (folder / "crf-as-rnn" / "seed0" / "last.pt").is_file() and runs["CRF-as-RNN"]["mean"] is not None
    capsys.readouterr()
    reproduce(exp.name, out=tmp_path, budget=2, seeds=1, overrides=TINY_UNET, data_root=str(root), report=False)
    assert capsys.readouterr().err.count("finished before") == 3


def test_equal_epochs_and_shift_and_stitch_runs_on_a_tiny_fcn(tmp_path, monkeypatch):
    """images_of: trained without a time limit on as many images as its source saw; an evaluate run may set
    model.args.output_stride (filter rarefaction = shift-and-stitch from the same weights) and is timed."""
    from conftest import TINY_FCN, _data_root
    from pixelwise.reproduce import Claim, Experiment, Planned

    require_dataset("camvid")
    tiny = [o for o in TINY_FCN if not o.startswith(("train.max_steps", "train.val_every", "train.batch_size"))]
    exp = Experiment("tiny-fcn", "tiny", "test", "miou", 3, claims=(
        Claim("FCN-32s x4", "FCN-32s", "+"), Claim("FCN-32s", "FCN-32s x4", "cheaper", metric="eval_seconds_per_image")),
        runs=(Planned("FCN-32s", "fcn8s_camvid_cpu", ("model.name=fcn32s", "train.batch_size=2")),
              Planned("FCN-32s x4", "fcn8s_camvid_cpu", ("model.args.output_stride=8",), share=0, evaluate="FCN-32s"),
              Planned("FCN-8s, equal images", "fcn8s_camvid_cpu", ("train.batch_size=1",), share=0,
                      images_of="FCN-32s")))
    monkeypatch.setitem(EXPERIMENTS, exp.name, exp)
    summary = reproduce(exp.name, out=tmp_path, budget=3, seeds=1, overrides=tiny, data_root=_data_root(),
                        report=False)
    runs = {r["run"]: r for r in summary["runs"]}
    assert runs["FCN-8s, equal images"]["steps"] == [2 * runs["FCN-32s"]["steps"][0]]  # batch 1 against 2
    folder = tmp_path / exp.name
    scored = json.loads((folder / "fcn-32s-x4" / "seed0" / "result.json").read_text())
    assert scored["metrics"]["eval_seconds_per_image"] > 0 and scored["overrides"][0] == "model.args.output_stride=8"
    assert {c["metric"] for c in summary["claims"]} == {"miou", "eval_seconds_per_image"}


def test_reproduce_all_takes_no_name(capsys):
    assert main(["reproduce", "--all", "unet-weightmap"]) == 2
    assert "--all runs every experiment: give no NAME" in capsys.readouterr().err


@pytest.mark.slow  # about 20 s: the default suite keeps within 10 minutes
def test_reproduce_all_writes_one_page(tmp_path):
    from pixelwise.reproduce import reproduce_all

    root = require_dataset("isbi2012").parent
    page = reproduce_all(out=tmp_path, names=["unet-weightmap"], budget=1, seeds=2, overrides=TINY_UNET,
                         data_root=str(root), progress=False)
    html = page.read_text()
    assert page == tmp_path / "index.html" and html.count('href="#exp-unet-weightmap"') == 3
    assert 'href="unet-weightmap/report.html"' in html
