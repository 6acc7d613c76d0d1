import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["-o", "model.args={base_width: 4, depth: 2}", "-o", "data.augment.crop_size=48", "-o", "train.max_steps=4",
        "-o", "train.val_every=2", "-o", "data.train_split=0-3", "-o", "data.val_split=25-26", "-o", "train.device=cpu",
        "-o", "infer.tile=128"]


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "models", "demo", "report", "reproduce"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_models_lists_and_describes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "unet " in out and "unet_padded" in out
    assert main(["models", "unet"]) == 0
    assert "base_width = 64" in capsys.readouterr().out


def test_train_eval_predict_end_to_end(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(run), *TINY]) == 0
    assert "trained 4 steps" in capsys.readouterr().out

    assert main(["eval", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(run),
                 "--checkpoint", str(run / "best.pt"), *TINY]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou", "per_class_iou", "dice", "membrane_iou",
                "adapted_rand_error", "vi", "pixel_error"):
        assert key in metrics, key
    assert metrics["num_images"] == 2 and 0 <= metrics["pixel_error"] <= 1
    assert metrics["pixel_error"] == pytest.approx(1 - metrics["pixel_acc"])

    out = tmp_path / "pred"
    images = data_root / "isbi2012" / "train" / "image"
    odd = tmp_path / "odd.png"  # a size the network cannot take whole
    Image.fromarray(np.array(Image.open(images / "00.png"))[:301, :157]).save(odd)
    assert main(["predict", "unet_isbi2012_cpu", "--data-root", str(data_root), "--checkpoint",
                 str(run / "last.pt"), str(images / "00.png"), str(odd), "--out", str(out), *TINY,
                 "-o", "infer.save_probs=true", "-o", "infer.tta=true"]) == 0
    labels = Image.open(out / "odd.png")
    assert labels.mode == "P" and labels.size == (157, 301)
    assert set(np.unique(np.array(labels))) <= {0, 1}
    assert Image.open(out / "00_overlay.png").size == Image.open(images / "00.png").size
    probs = np.load(out / "odd_probs.npy")
    assert probs.shape == (2, 301, 157) and np.allclose(probs.sum(0), 1, atol=1e-2)


def test_clear_errors_exit_2(tmp_path, data_root, capsys):
    assert main(["train", "unet_isbi2012_cpu", "-o", "train.btach_size=2"]) == 2
    assert "did you mean train.batch_size" in capsys.readouterr().err
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "isbi" in err.lower()
    assert main(["train", "no_such_recipe"]) == 2
    assert "unet_isbi2012_cpu" in capsys.readouterr().err
    assert main(["eval", "unet_isbi2012_cpu", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["train", "unet_isbi2012_cpu", "-o", "model.args.base_widht=4"]) == 2
    assert "base_width" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ckpt = tmp_path / "c.pt"
    assert main(["predict", "unet_isbi2012_cpu", "--checkpoint", str(ckpt), str(tmp_path / "nope.png"),
                 "--out", str(tmp_path)]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_reported(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert main(["train", "unet_isbi2012_cpu", "--data-root", str(data_root), "--output-dir", str(run), *TINY,
                 "-o", "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["eval", "unet_isbi2012_cpu", "--data-root", str(data_root), "--checkpoint", str(run / "last.pt"),
                 *TINY, "-o", "model.args.base_width=8"]) == 2
    assert "model.args={'base_width': 8, 'depth': 2} (checkpoint: {'base_width': 4, 'depth': 2})" in \
        capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).parent / "pixelwise"
    out = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "unet" in out.stdout


def test_demo_writes_a_complete_run_folder(tmp_path, data_root, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--data-root", str(data_root), "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "adapted Rand error" in text and str(out) in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    for name in ("curves.png", "log.csv", "best.pt", "predictions/25.png", "predictions/26_overlay.png"):
        assert (out / name).exists(), name
    assert Image.open(out / "curves.png").size[0] > 500


def test_fcn8s_camvid_train_eval_predict(tmp_path, camvid_dir, capsys):
    run, root = tmp_path / "fcn", str(camvid_dir.parent)
    tiny = ["-o", "model.args.width=0.125", "-o", "model.args.fc_channels=32", "-o", "data.augment.crop_size=64",
            "-o", "data.limit=4", "-o", "train.batch_size=2", "-o", "train.max_steps=2", "-o", "train.val_every=2"]
    assert main(["train", "configs/fcn8s_camvid_cpu.yaml", "--data-root", root, "--output-dir", str(run), *tiny]) == 0
    assert main(["eval", "fcn8s_camvid_cpu", "--data-root", root, "--output-dir", str(run),
                 "--checkpoint", str(run / "best.pt"), *tiny]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and len(metrics["per_class_iou"]) == 11
    assert {"pixel_acc", "mean_acc", "miou", "fwiou"} <= set(metrics)
    image = sorted((camvid_dir / "val").glob("*.png"))[0]
    assert main(["predict", "fcn8s_camvid_cpu", "--data-root", root, "--checkpoint", str(run / "last.pt"),
                 str(image), "--out", str(tmp_path / "pred"), *tiny]) == 0
    labels = Image.open(tmp_path / "pred" / f"{image.stem}.png")
    assert labels.size == (480, 360) and set(np.unique(np.array(labels))) <= set(range(11))


def test_fc_densenet56_camvid_train_eval_predict(tmp_path, camvid_dir):
    run, root = tmp_path / "tiramisu", str(camvid_dir.parent)
    tiny = ["-o", "model.args={growth_rate: 4, layers_per_block: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], first_channels: 8}",
            "-o", "data.augment.crop_size=64", "-o", "data.limit=3", "-o", "train.max_steps=2",
            "-o", "train.val_every=2", "-o", "train.time_limit=null"]
    assert main(["train", "configs/fc_densenet56_camvid_cpu.yaml", "--data-root", root, "--output-dir", str(run),
                 *tiny]) == 0
    assert main(["eval", "fc_densenet56_camvid_cpu", "--data-root", root, "--output-dir", str(run),
                 "--checkpoint", str(run / "best.pt"), *tiny]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and len(metrics["per_class_iou"]) == 11
    image = sorted((camvid_dir / "val").glob("*.png"))[0]  # 360x480: not a multiple of 32
    assert main(["predict", "fc_densenet56_camvid_cpu", "--data-root", root, "--checkpoint", str(run / "last.pt"),
                 str(image), "--out", str(tmp_path / "pred"), *tiny]) == 0
    assert Image.open(tmp_path / "pred" / f"{image.stem}.png").size == (480, 360)


def test_main_leaves_warnings_as_it_found_them_and_nothing_imports_the_cli():
    import re
    import warnings

    before = warnings.formatwarning
    assert main(["recipes"]) == 0
    assert warnings.formatwarning is before
    package = Path(__file__).resolve().parents[2] / "pixelwise"
    importers = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 if p.name not in ("cli.py", "__main__.py") and re.search(r"pixelwise\.cli\b|from pixelwise import cli",
                                                                          p.read_text())]
    assert importers == []


def _option(parser, command: str, flag: str):
    """The action of `flag` in the subparser of `command`."""
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


def test_runtime_and_format_choices_come_from_the_registries(monkeypatch):
    from pixelwise.deploy import runtimes

    parser = build_parser()
    for command in ("eval", "predict"):
        assert list(_option(parser, command, "--runtime").choices) == list(runtimes.RUNTIMES)
    assert list(_option(parser, "export", "--format").choices) == list(runtimes.FORMATS)

    class ExtraRuntime(runtimes.Runtime):
        name, title, formats, precisions = "extra", "Extra", ("onnx",), ("fp32", "bf16")

    monkeypatch.setitem(runtimes.RUNTIMES, ExtraRuntime.name, ExtraRuntime)
    parser = build_parser()
    for command in ("eval", "predict"):
        runtime = _option(parser, command, "--runtime")
        assert list(runtime.choices) == list(runtimes.RUNTIMES) and "extra" in runtime.choices
        assert "extra (.onnx)" in runtime.help and "runs OpenVINO or Extra in bf16" in runtime.help
    assert build_parser().parse_args(["eval", "--checkpoint", "c.pt", "--runtime", "extra"]).runtime == "extra"


def test_no_function_of_the_cli_is_longer_than_80_lines():
    tree = ast.parse((REPO / "pixelwise" / "cli.py").read_text())
    long = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80}
    assert long == {}


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, pixelwise.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
