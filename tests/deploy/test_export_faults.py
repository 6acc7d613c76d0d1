"""`pixelwise export` and exported OpenVINO files when something goes wrong: the padded U-Net, exporter dumps
kept out of the terminal, a missing / truncated / foreign .bin, an unwritable folder and a full disk."""
import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pixelwise.export as export_module
from helpers.synthetic import Disks, write_split
from pixelwise.cli import main
from pixelwise.inference import load_predictor
from pixelwise.errors import CheckpointError, ConfigError
from pixelwise.models.unet import UNet

RECIPE = """\
output_dir: {out}
model: {{name: {name}, num_classes: 2, args: {{base_width: 4, depth: 4, in_channels: 1, batch_norm: true{extra}}}}}
data: {{dataset: folder, root: {root}, path: disks, num_classes: 2, mean: [0.5], std: [0.25]}}
train: {{batch_size: 2, max_steps: 2, val_every: 2, lr: 0.01, optimizer: adam, threads: 2}}
"""
PADDED = {"unet_padded": "", "unet": ", padding: true"}  # the padded U-Net under both names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_faults")
    write_split(tmp / "data" / "disks" / "train", Disks(4, size=64, seed=0))
    write_split(tmp / "data" / "disks" / "val", Disks(2, size=64, seed=1))
    for name, extra in PADDED.items():
        recipe = tmp / f"{name}.yaml"
        recipe.write_text(RECIPE.format(out=tmp / name, root=tmp / "data", name=name, extra=extra))
        assert main(["train", str(recipe)]) == 0
    return tmp


def _export(runs: Path, fmt: str, out: Path, model: str = "unet_padded") -> int:
    return main(["export", "--checkpoint", str(runs / model / "best.pt"), "--format", fmt, "--out", str(out)])


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pixelwise export: error:"), err[:2000]
    return lines[0]


def _logs(stem: str) -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"pixelwise-export-{stem}-*.log"))


def _nothing_left(folder: Path, stem: str) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith((stem, ".pixelwise-export-"))]


@pytest.mark.parametrize("model", list(PADDED))
def test_the_padded_unet_exports_to_onnx_quietly_and_agrees_with_pytorch(runs, model, capfd):
    out = runs / f"{model}-padded.onnx"
    capfd.readouterr()
    assert _export(runs, "onnx", out, model) == 0
    said, err = capfd.readouterr()
    assert "largest probability difference" in said and f"wrote {out}" in said
    assert "[torch.onnx]" not in said + err and err == ""  # the exporter's progress lines go to its log
    assert not _logs(out.stem)  # ... which is removed after a successful export
    image = np.random.default_rng(1).integers(0, 256, (48, 80), dtype=np.uint8)  # another size than exported
    labels = load_predictor(out, runtime="onnxruntime")(image)
    assert (labels == load_predictor(runs / model / "best.pt")(image)).float().mean() > 0.999


def test_a_failing_exporter_prints_one_line_naming_its_log(runs, capfd, monkeypatch):
    """What torch.onnx prints (a 45 KB graph dump on stderr and progress on stdout, from Python and from C++) goes to
    a log file; the error is one line with the real cause and the log's name."""

    def noisy(*args, **kwargs):
        print("[torch.onnx] Obtain model graph ... " + "x" * 20000)
        os.write(2, b"graph():\n" + b"    %conv = call_function[target=torch.ops.aten.conv2d]\n" * 500)
        try:
            raise ValueError("Could not guard on data-dependent expression u0 < 2")
        except ValueError as inner:
            raise RuntimeError("Failed to export the model with torch.export. This is step 1/3 of exporting the "
                               "model to ONNX. Next steps:\n- Modify the model code\n## Exception summary") from inner

    monkeypatch.setattr(torch.onnx, "export", noisy)
    out = runs / "noisy.onnx"
    before = _logs(out.stem)
    capfd.readouterr()
    assert _export(runs, "onnx", out) == 2
    said, err = capfd.readouterr()
    assert "xxxxxxxx" not in said + err and "call_function" not in said + err
    line = _one_line_error(err)
    assert str(out) in line and "ValueError: Could not guard on data-dependent expression u0 < 2" in line
    logs = _logs(out.stem) - before
    assert len(logs) == 1 and str(next(iter(logs))) in line
    text = next(iter(logs)).read_text()
    assert "x" * 20000 in text and "call_function" in text and "Next steps" in text  # the dump and the traceback
    next(iter(logs)).unlink()
    _nothing_left(runs, out.stem)


def test_a_real_exporter_failure_is_captured(tmp_path, capfd):
    """A real torch.export failure (the skip crops of a padded U-Net are data-dependent slices) through the same
    path: nothing of its dump on the terminal, its cause in the message."""
    model = UNet(num_classes=2, in_channels=1, base_width=4, depth=4, padding=True, batch_norm=True).eval()
    model.padding = False  # crops the skips: a data-dependent slice of symbolic sizes
    capfd.readouterr()
    with pytest.raises(ConfigError, match="GuardOnDataDependentSymNode") as caught:
        export_module._export_part(model, (torch.rand(2, 1, 64, 64),), (0, 2, 3), "onnx", tmp_path / "m.onnx", None)
    said, err = capfd.readouterr()
    assert said == "" and err == ""
    log = Path(str(caught.value).rsplit(" is in ", 1)[1].rstrip(")"))
    assert "GuardOnDataDependentSymNode" in log.read_text() and "\n" not in str(caught.value)
    log.unlink()


@pytest.fixture(scope="module")
def openvino_export(runs):
    out = runs / "ov" / "model.xml"
    out.parent.mkdir()
    assert _export(runs, "openvino", out) == 0
    return out


def _copy(xml: Path, folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    shutil.copy(xml, folder / xml.name)
    shutil.copy(xml.with_suffix(".bin"), folder / f"{xml.stem}.bin")
    return folder / xml.name, folder / f"{xml.stem}.bin"


def _same_size_other_weights(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # the last weights zeroed: the same size, another model's numbers
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,expected", [
    (lambda bin_: bin_.unlink(), "is missing"),
    (lambda bin_: bin_.write_bytes(bin_.read_bytes()[:1000]), "is truncated or does not belong to"),
    (lambda bin_: bin_.write_bytes(b""), "is truncated or does not belong to"),
    (lambda bin_: bin_.write_bytes(bin_.read_bytes() * 2), "is truncated or does not belong to"),
    (_same_size_other_weights, "is truncated or does not belong to"),
], ids=["missing", "truncated", "empty", "longer", "same-size-foreign"])
def test_openvino_refuses_a_missing_truncated_or_foreign_bin_in_one_line(openvino_export, tmp_path, damage, expected,
                                                                         capsys):
    xml, weights = _copy(openvino_export, tmp_path / "copy")
    damage(weights)
    assert main(["eval", "--checkpoint", str(xml), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(weights) in err and expected in err, err
    assert "core.cpp" not in err and not (tmp_path / "m.json").exists()
    with pytest.raises(CheckpointError, match=expected):
        load_predictor(xml)


def test_an_intact_openvino_copy_still_runs(openvino_export, tmp_path):
    xml, _ = _copy(openvino_export, tmp_path / "copy")
    image = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    assert load_predictor(xml)(image).shape == (64, 64)


def _fail_after_writing(exc):
    """A writer that leaves a partial file, then fails as a full disk does."""

    def write(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, Path)))
        Path(target).write_bytes(b"partial")
        raise exc

    return write


DISK_FULL = [
    ("onnx", ".onnx", lambda: (torch.onnx.ONNXProgram, "save"), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
     "No space left on device"),
    ("torch-export", ".pt2", lambda: (torch.export, "save"),
     RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file "
                  "write failed"), "file write failed"),
    ("openvino", ".xml", lambda: (__import__("openvino"), "save_model"),
     RuntimeError("Exception from src/core/src/pass/serialize.cpp:1170:\nCheck 'bin_file' failed at "
                  "src/core/src/pass/serialize.cpp:1170:\nCan't open bin file.\n"), "Can't open bin file"),
]


@pytest.mark.parametrize("fmt,suffix,writer,exc,reason", DISK_FULL, ids=[c[0] for c in DISK_FULL])
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(runs, fmt, suffix, writer, exc, reason, capsys,
                                                                 monkeypatch):
    owner, name = writer()
    if isinstance(owner, type):
        monkeypatch.setattr(owner, name, lambda self, *a, **k: _fail_after_writing(exc)(*a, **k))
    else:
        monkeypatch.setattr(owner, name, _fail_after_writing(exc))
    out = runs / "full" / f"full-{fmt}{suffix}"
    out.parent.mkdir(exist_ok=True)
    logs = _logs(out.stem)
    assert _export(runs, fmt, out) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"cannot write '{out}'" in line and reason in line and "nothing was written" in line
    assert not list(out.parent.iterdir()) and _logs(out.stem) == logs


def test_export_into_an_unwritable_folder_is_one_line(runs, capsys, monkeypatch):
    folder = runs / "locked"
    folder.mkdir()
    real = tempfile.mkdtemp

    def denied(*args, dir=None, **kwargs):  # what mkdtemp raises in a folder without write permission
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / ".pixelwise-export-x"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    assert _export(runs, "onnx", folder / "m.onnx") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(folder / "m.onnx") in line and "Permission denied" in line and not list(folder.iterdir())
    assert _export(runs, "onnx", runs / "unet" / "best.pt" / "m.onnx") == 2  # a folder path under a regular file
    assert "is a file, not a folder" in _one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into any folder")
def test_export_into_a_read_only_folder_is_one_line(runs, capsys):
    folder = runs / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert _export(runs, "onnx", folder / "m.onnx") == 2
        line = _one_line_error(capsys.readouterr().err)
        assert str(folder / "m.onnx") in line and "Permission denied" in line
    finally:
        folder.chmod(0o755)


def test_a_failed_rename_removes_the_files_already_in_place(runs, capsys, monkeypatch):
    out = runs / "rename" / "m.xml"
    out.parent.mkdir()
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".bin"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert _export(runs, "openvino", out) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(out.with_suffix(".bin")) in line and "Input/output error" in line
    assert not list(out.parent.iterdir())
