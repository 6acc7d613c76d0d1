"""Nothing a user owns is lost: no command writes over a file it did not write itself, follows a
link out of its folder, or leaves a message that names a checkpoint that is not there. Runs on a folder
dataset written here (no shared data needed)."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.runs import RECIPE, trained_run
from helpers.synthetic import Disks, write_split
from pixelwise.cli import main
from pixelwise.files import RunLock, atomic_write, clean_stale_temporaries


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (links not followed) with its bytes' digest; not the run lock, which records who
    asked for the folder last."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if not p.is_symlink()
            else "link:" + os.readlink(p) for p in sorted(folder.rglob("*"))
            if (p.is_file() or p.is_symlink()) and p.name != ".lock"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("ownership"), "--no-report")


def test_train_refuses_a_folder_holding_a_finished_run(run, capsys):
    before = snapshot(run / "run")
    assert main(["train", str(run / "recipe.yaml"), "--no-report", "-o", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "holds another run (it ran to step 4)" in err and "--resume" in err and "--overwrite" in err, err
    assert snapshot(run / "run") == before
    # --overwrite starts over and says what it replaces; the user's own file there stays.
    other = run / "over"
    assert main(["train", str(run / "recipe.yaml"), "--no-report", "--output-dir", str(other)]) == 0
    (other / "notes.txt").write_text("mine")
    assert main(["train", str(run / "recipe.yaml"), "--no-report", "--output-dir", str(other), "--overwrite",
                 "-o", "train.max_steps=2"]) == 0
    err = capsys.readouterr().err
    assert "starting over" in err and "best.pt" in err and "log.csv" in err
    assert (other / "notes.txt").read_text() == "mine"
    assert json.loads((other / "train_state.json").read_text())["step"] == 2


def test_a_refused_start_leaves_nothing_behind(run, tmp_path):
    out = tmp_path / "never"
    assert main(["train", str(run / "recipe.yaml"), "--output-dir", str(out), "--data-root", str(tmp_path)]) == 2
    assert not [p for p in out.iterdir() if p.name != ".lock"]  # no config.yaml that a later run would take for a run


def test_eval_out_never_replaces_a_file_it_did_not_write(run, capsys):
    ckpt = run / "run" / "best.pt"
    label = run / "data" / "disks" / "val" / "masks" / "00.png"
    last = run / "run" / "last.pt"
    hard = run / "hard.pt"
    os.link(last, hard)  # the same file under another name
    before = {p: p.read_bytes() for p in (last, label, ckpt)}
    for out in (last, label, hard, run / "recipe.yaml"):
        assert main(["eval", "--checkpoint", str(ckpt if out != hard else last), "--out", str(out)]) == 2
        assert "left as it is" in capsys.readouterr().err or out == hard
    assert {p: p.read_bytes() for p in before} == before
    # An earlier metrics file is replaced.
    assert main(["eval", "--checkpoint", str(ckpt), "--out", str(run / "m.json")]) == 0
    assert main(["eval", "--checkpoint", str(ckpt), "--out", str(run / "m.json")]) == 0


def test_predict_never_replaces_ground_truth_nor_follows_links(run, tmp_path, capsys):
    masks = run / "data" / "disks" / "val" / "masks"
    images = run / "data" / "disks" / "val" / "images"
    ckpt = str(run / "run" / "best.pt")
    before = snapshot(masks)
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(masks)]) == 2
    assert "not a prediction of pixelwise predict" in capsys.readouterr().err
    assert snapshot(masks) == before
    # Its own earlier predictions are replaced, but a link the user put there is not followed or replaced.
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(out)]) == 0
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(out)]) == 0
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (out / "00_overlay.png").unlink()
    (out / "00_overlay.png").symlink_to(victim)
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(out)]) == 2
    assert victim.read_bytes() == b"precious"


def test_stale_temporaries_are_only_pixelwise_own(tmp_path):
    notes = tmp_path / ".notes.tmp"
    notes.write_text("mine")
    lookalike = tmp_path / ".mine.999999.abcdefgh.tmp"  # a pid that is gone, but a name pixelwise never writes
    lookalike.write_text("mine")
    stale = tmp_path / ".last.pt.999999.abcd_123.tmp"
    stale.write_text("half a checkpoint")
    assert clean_stale_temporaries(tmp_path, ("last.pt",)) == [stale]
    assert notes.read_text() == "mine" and lookalike.read_text() == "mine"


def test_lock_and_atomic_writes_do_not_follow_links(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(Exception, match="is a link"):
        RunLock(run).acquire()
    (run / ".lock").unlink()
    (run / ".lock").write_text("my own notes")
    with pytest.raises(Exception, match="not pixelwise's lock file"):
        RunLock(run).acquire()
    assert (run / ".lock").read_text() == "my own notes"
    (run / "log.csv").symlink_to(victim)
    with pytest.raises(Exception, match="it is a link"):
        atomic_write(run / "log.csv", lambda f: f.write(b"x"), what="training log")
    assert victim.read_text() == "precious"


def test_a_full_disk_during_a_checkpoint_save_is_one_true_line(run, tmp_path, monkeypatch, capsys):
    """torch.save raises RuntimeError, not OSError, when the disk fills."""
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > 1:  # the first last.pt (step 2) is written; later ones find the disk full
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "full"
    code = main(["train", str(run / "recipe.yaml"), "--no-report", "--output-dir", str(out), "-o", "train.ckpt_every=2",
                 "-o", "train.val_every=100"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("pixelwise")]  # not the progress lines
    assert len(lines) == 1 and "cannot write checkpoint" in lines[0] and "torch.save failed" in lines[0]
    assert f"the last good checkpoint is {out / 'last.pt'} (step 2)" in lines[0]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    assert not list(out.glob(".*.tmp"))


def test_a_run_whose_first_save_fails_says_no_checkpoint_exists(run, tmp_path, monkeypatch, capsys):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "full"
    assert main(["train", str(run / "recipe.yaml"), "--no-report", "--output-dir", str(out), "-o", "train.ckpt_every=2",
                 "-o", "train.val_every=100"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "no checkpoint of this run exists" in err
    assert "is saved in" not in err and not (out / "last.pt").exists()


def test_validation_masks_that_score_no_foreground_are_refused_before_training(run, tmp_path, capsys):
    data = tmp_path / "data" / "disks"
    write_split(data / "train", Disks(6, seed=0))
    write_split(data / "val", Disks(2, seed=1))
    for p in (data / "val" / "masks").iterdir():  # validation stored 0/255, training 0/1
        Image.fromarray((np.array(Image.open(p)) * 255).astype(np.uint8)).save(p)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", root=tmp_path / "data"))
    assert main(["train", str(recipe), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "validation masks" in err and "data.label_map" in err
    assert not (tmp_path / "run" / "log.csv").exists()


def test_report_on_a_broken_config_is_one_line(run, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.yaml").write_text("model: [unclosed\n")
    assert main(["report", str(folder)]) == 2
    assert "config.yaml" in capsys.readouterr().err
    (folder / "config.yaml").write_bytes(b"\xff\xfe")
    assert main(["report", str(folder)]) == 2
    (folder / "config.yaml").write_text("- a list\n")
    assert main(["report", str(folder)]) == 2


FOREIGN = b"a file of the user's, not pixelwise's"


def _refused_and_kept(argv: list[str], path: Path, capsys) -> None:
    """`argv` run with a foreign file at `path` (one of its outputs) exits 2 and leaves the file's bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FOREIGN)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and path.read_bytes() == FOREIGN, (argv, path, err)
    path.unlink()


def test_no_command_writes_over_a_foreign_file(run, tmp_path, capsys):
    """Every command that writes, with a foreign file at each of its output paths: nothing changes."""
    from pixelwise.engine.trainer import RUN_FILES

    recipe, ckpt = str(run / "recipe.yaml"), str(run / "run" / "best.pt")
    images = run / "data" / "disks" / "val" / "images"
    for name in (*RUN_FILES, ".lock"):
        out = tmp_path / "train" / name.strip(".")
        _refused_and_kept(["train", recipe, "--output-dir", str(out)], out / name, capsys)
    cfg_out = tmp_path / "eval"  # eval's default --out is OUTPUT_DIR/metrics.json
    _refused_and_kept(["eval", "--checkpoint", ckpt, "--output-dir", str(cfg_out), "-o", f"output_dir={cfg_out}"],
                      cfg_out / "metrics.json", capsys)
    _refused_and_kept(["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "m.json")], tmp_path / "m.json", capsys)
    for name in ("00.png", "00_overlay.png", "01.png", "classes.json"):
        out = tmp_path / "predict" / name.replace(".", "_")
        _refused_and_kept(["predict", "--checkpoint", ckpt, str(images), "--out", str(out)], out / name, capsys)
    _refused_and_kept(["predict", "--checkpoint", ckpt, str(images), "--out", str(tmp_path / "probs"), "-o",
                       "infer.save_probs=true"], tmp_path / "probs" / "01_probs.npy", capsys)
    _refused_and_kept(["report", str(run / "run"), "--out", str(tmp_path / "r.html")], tmp_path / "r.html", capsys)
    for name in (*RUN_FILES, "predictions/00.png"):
        out = tmp_path / "demo" / name.replace("/", "_")
        _refused_and_kept(["demo", "--out", str(out)], out / name, capsys)
    for name in ("m.onnx", "m.xml", "m.bin"):
        fmt = "onnx" if name == "m.onnx" else "openvino"
        _refused_and_kept(["export", "--checkpoint", ckpt, "--format", fmt, "--out",
                           str(tmp_path / "export" / name.replace(".bin", ".xml"))], tmp_path / "export" / name, capsys)
    for name in ("summary.md", "summary.json", "report.html"):  # refused before any training
        out = tmp_path / "reproduce" / name.replace(".", "_")
        _refused_and_kept(["reproduce", "unet-weightmap", "--out", str(out)], out / "unet-weightmap" / name, capsys)


def test_the_demo_replaces_only_its_own_earlier_run(tmp_path):
    """Running the demo again (on the sample, then on the full data, say) replaces its earlier run; a folder it did
    not make is refused."""
    from pixelwise.demo import DEMO_MARK, _earlier_demo

    out = tmp_path / "demo"
    assert _earlier_demo(out) is False and (out / DEMO_MARK).is_file()  # a new folder, marked
    (out / "best.pt").write_bytes(b"an earlier demo's")
    assert _earlier_demo(out) is True
    (out / DEMO_MARK).unlink()
    with pytest.raises(Exception, match="not an earlier run of pixelwise demo"):
        _earlier_demo(out)
    assert (out / "best.pt").read_bytes() == b"an earlier demo's"
