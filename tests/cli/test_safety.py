"""The command line with untrusted files and careless arguments: no code runs from a checkpoint, no input is
overwritten, outputs keep distinct names, every user error is one line with exit code 2."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ["-o", "model.args={base_width: 4, depth: 2}", "-o", "data.augment.crop_size=48", "-o", "train.max_steps=2",
        "-o", "train.val_every=2", "-o", "data.train_split=0-3", "-o", "data.val_split=25", "-o", "train.device=cpu",
        "-o", "infer.tile=128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained U-Net run folder (best.pt, last.pt)."""
    from conftest import require_dataset

    root = require_dataset("isbi2012").parent
    out = tmp_path_factory.mktemp("cli_safety") / "run"
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(root), "--output-dir", str(out), *TINY]) == 0
    return out


class Payload:
    """Unpickling this creates a file: the proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_checkpoint(tmp_path, run):
    ckpt = load_checkpoint(run / "best.pt")
    ckpt["extra"] = Payload(tmp_path / "PWNED")
    torch.save(ckpt, tmp_path / "evil.pt")
    return tmp_path / "evil.pt"


def test_a_checkpoint_cannot_run_code_unless_trusted(tmp_path, run, data_root, capsys):
    evil = _evil_checkpoint(tmp_path, run)
    image = str(data_root / "isbi2012" / "train" / "image" / "00.png")
    common = ["--data-root", str(data_root), *TINY]
    attempts = [
        ["eval", "unet_isbi2012_cpu", "--checkpoint", str(evil), "--out", str(tmp_path / "m.json"), *common],
        ["predict", "unet_isbi2012_cpu", "--checkpoint", str(evil), image, "--out", str(tmp_path / "p"), *common],
        ["train", "unet_isbi2012_cpu", "--resume", str(evil), "--output-dir", str(tmp_path / "r"), *common],
        ["train", "unet_isbi2012_cpu", "-o", f"model.init_from={evil}", "--output-dir", str(tmp_path / "i"), *common],
    ]
    for argv in attempts:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "unpickling such objects can run arbitrary code" in err and "--trust-checkpoint" in err, argv
        assert len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "PWNED").exists(), argv
    # --trust-checkpoint trusts the file given as --checkpoint / --resume, not a file the config names.
    assert main([*attempts[3], "--trust-checkpoint"]) == 2 and not (tmp_path / "PWNED").exists()
    assert "arbitrary code" in capsys.readouterr().err
    assert main([*attempts[0][:-len(common)], "--trust-checkpoint", *common]) == 0
    assert (tmp_path / "PWNED").exists()  # trusted: read as the user asked, objects and all


def test_checkpoints_of_pixelwise_0_1_still_load_without_trust(tmp_path, run):
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["rng"]["numpy"] = np.random.get_state()  # format 1 kept numpy's state as an array
    ckpt["rng"]["python"] = tuple(ckpt["rng"]["python"])
    del ckpt["format"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(loaded["rng"]["numpy"][1], np.ndarray)
    from pixelwise.engine.checkpoint import set_rng_state

    set_rng_state(loaded["rng"])  # and resumes from it


def test_predict_never_writes_over_its_inputs(tmp_path, run, data_root, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    source = data_root / "isbi2012" / "train" / "image" / "00.png"
    (folder / "00.png").write_bytes(source.read_bytes())
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), str(folder), "--out",
                 str(folder), *TINY]) == 2
    err = capsys.readouterr().err
    assert "would replace the input" in err and "00.png" in err
    assert (folder / "00.png").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["00.png"]


def test_inputs_with_the_same_name_get_distinct_outputs(tmp_path, run, data_root, capsys):
    source = data_root / "isbi2012" / "train" / "image"
    for sub, name in (("a", "00.png"), ("b", "01.png")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.png").write_bytes((source / name).read_bytes())
    out = tmp_path / "pred"
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), str(tmp_path / "a" / "same.png"),
                 str(tmp_path / "b" / "same.png"), "--out", str(out), *TINY]) == 0
    assert "wrote 2 predictions" in capsys.readouterr().out
    for sub in ("a", "b"):
        assert Image.open(out / sub / "same.png").size == Image.open(source / "00.png").size
        assert (out / sub / "same_overlay.png").is_file()
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == ["cell", "membrane"]
    assert "0 = membrane and 255 = cell interior" in classes["note"]


def test_eval_takes_any_split_and_records_the_one_evaluated(tmp_path, run, data_root, capsys):
    out = tmp_path / "m.json"
    base = ["eval", "unet_isbi2012_cpu", "--data-root", str(data_root), "--checkpoint", str(run / "best.pt"),
            "--out", str(out), *TINY]
    assert main([*base, "--split", "27-28"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["split"] == "27-28" and metrics["num_images"] == 2
    assert metrics["class_names"] == ["cell", "membrane"] and len(metrics["per_class_iou"]) == 2
    assert main([*base, "-o", "data.val_split=27"]) == 0
    assert "isbi2012 27 (the recipe's val split): 1 images" in capsys.readouterr().out
    assert json.loads(out.read_text())["split"] == "27"


def test_training_ends_with_the_final_validation_metrics_and_class_names(tmp_path, data_root, capsys):
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(tmp_path / "r"),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "final validation (step 2):" in out and "membrane_iou" in out and "IoU per class: cell " in out


def test_resume_from_the_checkpoint_alone(tmp_path, data_root, capsys):
    run = tmp_path / "r"
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    # The checkpoint holds the config (data root, overrides): --resume alone continues it, here for 2 more steps.
    assert main(["train", "--resume", str(run / "last.pt"), "-o", "train.max_steps=4"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert main(["train", "--resume", str(run / "last.pt"), "-o", "train.batch_size=1"]) == 2
    assert "cannot change train.batch_size (2 -> 1)" in capsys.readouterr().err


def test_out_of_memory_says_to_tile(tmp_path, run, data_root, monkeypatch, capsys):
    from pixelwise.engine.predictor import Predictor

    def oom(self, image):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(Predictor, "_predict", oom)
    image = data_root / "isbi2012" / "train" / "image" / "00.png"
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), str(image),
                 "--out", str(tmp_path / "p"), *TINY, "-o", "infer.tile=null"]) == 2
    err = capsys.readouterr().err
    w, h = Image.open(image).size
    assert f"00.png ({h}x{w} pixels) does not fit in memory" in err and "-o infer.tile=" in err


@pytest.mark.parametrize("argv, expected", [
    (["models", "unett"], "unknown model 'unett'; did you mean 'unet'?"),
    (["train", "unet_isbi2012_cpu", "-o", "train.device=cuda"], "train.device='cuda' but CUDA is not available"),
    (["train", "unet_isbi2012_cpu", "-o", "train.max_steps=-5"], "train.max_steps=-5, expected an integer >= 1"),
    (["train", "unet_isbi2012_cpu", "-o", "model.name=unett"], "unknown model 'unett'"),
    (["train", "unet_isbi2012_cpu", "-o", "model.args.depth=0"], "depth=0, expected an integer >= 1"),
    (["train", "unet_isbi2012_cpu", "-o", "data.dataset=isbi"], "data.dataset='isbi' is unknown"),
    (["train", "unet_isbi2012_cpu", "-o", "data.train_split=abc"], "data.train_split: slice spec 'abc'"),
    (["train", "unet_isbi2012_cpu", "-o", "train.best_metric=iou"], "train.best_metric='iou' is not reported"),
    (["train"], "needs a CONFIG"),
    (["train", str(REPO)], "is a folder; expected a recipe YAML file"),
    (["eval", "unet_isbi2012_cpu", "--checkpoint", str(REPO / "README.md")], "could not be read as a PyTorch file"),
    (["eval", "unet_isbi2012_cpu", "--checkpoint", str(REPO)], "does not exist (it is a folder)"),
    (["train", "unet_isbi2012_cpu", "-o", "data.mean=[.5,.5,.5]", "-o", "data.std=[.2,.2,.2]"],
     "data.mean has 3 values but the images of 'isbi2012' have 1 channel"),
    (["train", "unet_isbi2012_cpu", "-o", "model.args.in_channels=3"], "model.args.in_channels=3 but the images"),
    (["train", "unet_isbi2012_cpu", "-o", "train.batch_size=1000"], "the global batch (1000 per process x 1 processes)"),
    (["train", "unet_isbi2012_cpu", "-o", "data.label_map={0: 1}"], "data.label_map={0: 1} is read only by the camvid"),
    (["train", "unet_isbi2012_cpu", "-o", "data.ignore_index=0"], "data.ignore_index=0 is read only by the folder"),
    (["train", "unet_isbi2012_cpu", "-o", "output_dir="], "output_dir='', expected a folder path"),
    (["train", "unet_isbi2012_cpu", "-o", "train.class_weights=[0, 0]"], "at least one positive"),
    (["train", "mask_rcnn_r18_fpn_isbi_cpu", "-o", "model.args.min_size=0"], "min_size=0, expected a positive side"),
    (["train", "mask_rcnn_r18_fpn_isbi_cpu", "-o", "model.args.rpn_pre_nms_top_n=5"], "expected a pair [train, test]"),
    (["train", "mask_rcnn_r18_fpn_isbi_cpu", "-o", "model.args.mask_threshold=7"], "mask_threshold=7, expected a prob"),
    (["train", "mask_rcnn_r18_fpn_isbi_cpu", "-o", "data.augment.crop_size=64"], "crop_size=64 is not supported"),
    (["train", "mask_rcnn_r18_fpn_isbi_cpu", "-o", "data.mean=[.9]"], "data.mean / data.std are not used"),
    (["demo", "-o", "data.dataset=folder"], "pixelwise demo trains a U-Net on ISBI 2012"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, expected, tmp_path, data_root, capsys):
    train = argv[:1] == ["train"] and "--output-dir" not in argv and "output_dir=" not in argv
    if train and len(argv) > 1:  # slices the bundled sample has too; the case's own -o comes later and wins
        argv = [*argv[:2], "-o", "data.train_split=0-7", "-o", "data.val_split=25", *argv[2:]]
    assert main([*argv, *(["--data-root", str(data_root), "--output-dir", str(tmp_path / "r")] if train
                          else [])]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unwritable_outputs_are_named(tmp_path, run, data_root, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    image = str(data_root / "isbi2012" / "train" / "image" / "00.png")
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), image,
                 "--out", str(blocker / "sub"), *TINY]) == 2
    assert f"output folder --out {str(blocker / 'sub')!r} cannot be created" in capsys.readouterr().err
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(blocker), *TINY]) == 2
    assert f"run folder {str(blocker)!r} is a file, not a folder" in capsys.readouterr().err
    assert main(["eval", "unet_isbi2012_cpu", "--data-root", str(data_root), "--checkpoint", str(run / "best.pt"),
                 "--out", str(blocker / "m.json"), *TINY]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_debug_shows_user_errors_in_full(monkeypatch, capsys):
    import pixelwise.cli as cli

    def bug(args):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(cli, "cmd_recipes", bug)
    with pytest.raises(ValueError, match="an internal mistake"):
        main(["recipes"])
    assert main(["--debug", "models", "unett"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_is_quick_and_lists_the_recipes(capsys):
    code = ("import sys, time; t = time.perf_counter(); from pixelwise.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "NO TORCH" in out and "pixelwise recipes" in out  # nothing heavy is imported for help
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    for name in ("unet_isbi2012_cpu", "fcn8s_camvid_cpu", "mask_rcnn_r18_fpn_isbi_cpu", "fc_densenet103_camvid"):
        assert name in listed
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "a run's best.pt" in capsys.readouterr().out  # --checkpoint says what it wants


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path, data_root):
    env = dict(os.environ, PIXELWISE_PROGRESS_EVERY="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pixelwise", "train", "unet_isbi2012_cpu", "--data-root", str(data_root),
                           "--output-dir", str(tmp_path / "r"), *TINY, "-o", "train.max_steps=3", "-o",
                           "train.time_limit=600"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train: step")]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]  # steps, not seconds
    assert "elapsed" in lines[-1]


@pytest.mark.slow  # builds a wheel (13 s)
def test_the_wheel_carries_the_recipes(tmp_path, data_root):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "pixelwise", source / "pixelwise", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(source)], check=True, capture_output=True, timeout=300)
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("pixelwise-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    check = subprocess.run([sys.executable, "-c", "import pixelwise; print(pixelwise.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.startswith(str(target)), check  # the installed wheel, not this checkout
    proc = subprocess.run([sys.executable, "-m", "pixelwise", "train", "unet_isbi2012_cpu", "--data-root", str(data_root),
                           *TINY, "-o", "train.max_steps=1", "--output-dir", "run"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "run" / "best.pt").is_file()
    listed = subprocess.run([sys.executable, "-m", "pixelwise", "recipes"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=60).stdout
    assert "unet_isbi2012_cpu" in listed and "fcn8s_camvid_cpu" in listed
    # The bundled samples travel in the wheel: every file, at most about 1.5 MB in all.
    shipped = sorted(p.relative_to(target / "pixelwise").as_posix() for p in (target / "pixelwise" / "samples").rglob("*")
                     if p.is_file())
    assert shipped == sorted(p.relative_to(REPO / "pixelwise").as_posix() for p in (REPO / "pixelwise" / "samples").rglob("*")
                             if p.is_file())
    assert sum((target / "pixelwise" / f).stat().st_size for f in shipped) < 1.55e6
    sample = subprocess.run([sys.executable, "-c", "from pixelwise.config import DataConfig; from pixelwise.data import "
                             "build_dataset; print(len(build_dataset(DataConfig(dataset='coco-sample'), 'train')))"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert sample.stdout.strip() == "3", sample.stderr


def test_checkpoint_settings_that_differ_from_the_config_are_named(tmp_path, run, data_root, capsys):
    image = str(data_root / "isbi2012" / "train" / "image" / "00.png")
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), image, "--out",
                 str(tmp_path / "p"), *TINY, "-o", "data.mean=[0.9]", "-o", "data.std=[0.05]"]) == 2
    err = capsys.readouterr().err
    assert "data.mean=[0.9] (checkpoint: [0.491])" in err and "data.std=[0.05] (checkpoint: [0.171])" in err
    bad = {"model": [1]}
    torch.save(bad, tmp_path / "list.pt")
    assert main(["eval", "unet_isbi2012_cpu", "--checkpoint", str(tmp_path / "list.pt"), *TINY]) == 2
    assert "its 'model' entry is a list, not a state dict" in capsys.readouterr().err
    assert main(["eval", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path), *TINY]) == 2
    assert "is a folder; expected the path of the metrics file" in capsys.readouterr().err


def test_outputs_of_different_inputs_never_collide(tmp_path, run, data_root, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    source = (data_root / "isbi2012" / "train" / "image" / "00.png").read_bytes()
    (folder / "x.png").write_bytes(source)
    (folder / "x_overlay.png").write_bytes(source)  # its prediction would be x's overlay
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), str(folder), "--out",
                 str(tmp_path / "p"), *TINY]) == 2
    assert "inputs named 'x' and 'x_overlay' would both be 'x_overlay.png'" in capsys.readouterr().err
