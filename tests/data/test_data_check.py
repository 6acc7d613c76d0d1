"""`pixelwise data check`: counts, sizes, classes and every problem of a split, each naming its file."""
from __future__ import annotations

import numpy as np
from PIL import Image

from helpers.synthetic import Disks, write_split
from pixelwise.cli import main

FOLDER = ["-o", "data.path=disks", "-o", "data.num_classes=2", "-o", "data.mean=[0.5]", "-o", "data.std=[0.25]"]


def test_a_clean_split_is_counted_and_passes(tmp_path, capsys):
    write_split(tmp_path / "disks" / "train", Disks(4, size=32, seed=0))
    assert main(["data", "check", "folder", "--data-root", str(tmp_path), *FOLDER]) == 0
    out = capsys.readouterr().out
    assert "folder, split train: 4 samples (semantic)" in out
    assert "image sizes: 32 x 32 (4)" in out and "channels: 1 (4)" in out
    disk = sum(int((Disks(4, size=32, seed=0).masks[i] == 1).sum()) for i in range(4))
    assert f"class1 {disk} (" in out and "problems: none" in out


def test_every_bad_sample_is_named_and_the_exit_code_is_2(tmp_path, capsys):
    split = tmp_path / "disks" / "train"
    write_split(split, Disks(5, size=32, seed=0))
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(split / "masks" / "01.png")  # a label outside the classes
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(split / "masks" / "03.png")  # a mask of another size
    (split / "images" / "04.png").write_bytes(b"not a png")  # a file that is not an image
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(split / "masks" / "02.png")  # all ignored: no label
    assert main(["data", "check", "folder", "--data-root", str(tmp_path), *FOLDER]) == 2
    out = capsys.readouterr().out
    assert "5 samples" in out and "problems: 3" in out
    problems = out.split("problems: 3", 1)[1]
    for name in ("01.png", "03.png", "04.png"):
        assert name in problems, name
    assert "7" in problems and "1 samples without any label (pixels)" in out and "02.png" in out


def test_an_instance_dataset_counts_objects_per_class(capsys):
    assert main(["data", "check", "coco-sample"]) == 0
    out = capsys.readouterr().out
    assert "coco-sample" in out and "3 samples (instance)" in out and "classes (objects)" in out
    counts = [int(part.split()[-2]) for part in out.split("classes (objects): ")[1].splitlines()[0].split(", ")]
    assert sum(counts) == 29  # the sample's 29 annotated objects (pixelwise/samples/coco/README.txt)


def test_a_folder_that_does_not_match_names_the_layout_expected(tmp_path, capsys):
    (tmp_path / "disks" / "train" / "pictures").mkdir(parents=True)
    assert main(["data", "check", "folder", "--data-root", str(tmp_path), *FOLDER]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Expected layout inside the dataset folder" in err and "masks" in err
    assert main(["data", "check", "camvid", "--data-root", str(tmp_path / "nothing")]) == 2
    assert "Expected layout inside it: train/, trainannot/" in capsys.readouterr().err
