"""ISBI 2012 read from the official download as it comes: the multi-page TIFFs train-volume.tif, train-labels.tif and
test-volume.tif, written here from the PNG slices of the shared data (or the bundled sample)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import DataConfig
from pixelwise.data import DataError, DatasetNotFoundError, ISBI2012, build_dataset, dataset_dir
from pixelwise.data.isbi2012 import NoSliceFiles
from pixelwise.data.stats import label_census

PAGES = 30  # as the official volumes; the bundled sample's 12 slices are repeated to fill them
TINY = ["-o", "model.args={base_width: 4, depth: 2}", "-o", "data.augment.crop_size=48", "-o", "train.max_steps=2",
        "-o", "train.val_every=2", "-o", "data.train_split=0-3", "-o", "data.val_split=25", "-o", "train.device=cpu",
        "-o", "infer.tile=128"]


def _png(path) -> np.ndarray:
    with Image.open(path) as f:
        return np.array(f)


@pytest.fixture(scope="module")
def pngs():
    """The PNG dataset folder and, for each of the PAGES pages, the slice file it is made from."""
    from conftest import require_dataset

    folder = require_dataset("isbi2012")
    stems = sorted(p.name for p in (folder / "train" / "image").glob("*.png"))
    tests = sorted(p.name for p in (folder / "test" / "image").glob("*.png"))  # none in the bundled sample
    return folder, [stems[k % len(stems)] for k in range(PAGES)], tests


def write_volumes(folder, pngs, writer="tifffile", test=True):
    """train-volume.tif, train-labels.tif (and test-volume.tif) in `folder`, page k = slice file pages[k]."""
    src, names, tests = pngs
    folder.mkdir(parents=True, exist_ok=True)
    stacks = {"train-volume.tif": [_png(src / "train" / "image" / n) for n in names],
              "train-labels.tif": [_png(src / "train" / "label" / n) for n in names]}
    if test:
        stacks["test-volume.tif"] = ([_png(src / "test" / "image" / n) for n in tests] if tests else
                                     stacks["train-volume.tif"])
    for name, pages in stacks.items():
        if writer == "pillow-lzw":  # compressed, as a TIFF writer may save it; Pillow reads it without extra packages
            first, *rest = [Image.fromarray(p) for p in pages]
            first.save(folder / name, save_all=True, append_images=rest, compression="tiff_lzw")
        else:
            tifffile.imwrite(folder / name, np.stack(pages), imagej=writer == "imagej")
    return folder


@pytest.mark.parametrize("writer", ["tifffile", "imagej", "pillow-lzw"])
def test_tiff_volumes_give_the_same_tensors_as_the_pngs(pngs, tmp_path, writer):
    src, names, _ = pngs
    folder = write_volumes(tmp_path / "isbi2012", pngs, writer, test=False)
    every = writer == "tifffile"  # every page; the others also compare U-Net's weight maps on a few
    pages = list(range(PAGES)) if every else [0, 3, 17, 29]
    tiff = ISBI2012(folder, indices=pages, weight_map=not every)
    assert tiff.layout == "tiff" and len(tiff) == len(pages) and tiff.names == [f"{k:02d}" for k in pages]
    for i, k in enumerate(pages):
        png = ISBI2012(src, indices=[int(names[k][:-4])], weight_map=not every)
        (image, target), (image0, target0) = tiff[i], png[0]
        assert image.dtype == torch.float32 and torch.equal(image, image0)
        assert set(target) == set(target0) and torch.equal(target["mask"], target0["mask"])
        assert every or torch.equal(target["weight"], target0["weight"])
        assert torch.equal(tiff.read_mask(i), png.read_mask(0))
        assert np.array_equal(tiff.image_array(i), png.image_array(0))
        assert np.array_equal(png.image_array(0), _png(png.image_paths[0]))
        assert tiff.image_size(i) == png.image_size(0) == tuple(image.shape[-2:])
    assert tiff.image_location(1) == f"page {pages[1]} of {str(folder / 'train-volume.tif')!r}"
    assert tiff.mask_location(1) == f"page {pages[1]} of label volume {str(folder / 'train-labels.tif')!r}"


def test_tiff_dataset_has_no_slice_files(pngs, tmp_path):
    folder = write_volumes(tmp_path / "isbi2012", pngs, test=False)
    ds = ISBI2012(folder, indices=[0, 1])
    # To code that asks, it has no files; code that needs them gets one line naming the volume.
    assert getattr(ds, "image_paths", None) is None and not hasattr(ds, "label_paths")
    with pytest.raises(DataError) as e:
        ds.image_paths  # noqa: B018
    assert isinstance(e.value, NoSliceFiles) and "train-volume.tif" in str(e.value) and "\n" not in str(e.value)
    # The PNG layout keeps its files; both layouts present: the PNG folders are read.
    both = tmp_path / "both"
    shutil.copytree(pngs[0] / "train", both / "train")
    write_volumes(both, pngs, test=False)
    assert ISBI2012(both, indices=[0]).layout == "png"


def test_build_dataset_splits_limit_and_census(pngs, tmp_path):
    write_volumes(tmp_path / "isbi2012", pngs)
    cfg = DataConfig(dataset="isbi2012", root=str(tmp_path))
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (25, 5) and val.names == ["25", "26", "27", "28", "29"]
    limited = build_dataset(DataConfig(dataset="isbi2012", root=str(tmp_path), limit=2), "train")
    assert len(limited) == 2 and limited.names == ["00", "01"]
    assert torch.equal(limited[1][1]["mask"], train[1][1]["mask"])
    counts, ignored = label_census(val, 2, 255, progress=False)
    png = ISBI2012(pngs[0], indices=[int(n[:-4]) for n in pngs[1][25:]])
    assert np.array_equal(counts, label_census(png, 2, 255, progress=False)[0]) and ignored.sum() == 0
    test = ISBI2012(tmp_path / "isbi2012", split="test")  # test-volume.tif
    assert len(test) == PAGES and test[0][1] == {} and test[0][0].shape[0] == 1
    with pytest.raises(DataError, match=r"slices \[30, 31\] not found in .*train-volume\.tif.*0\.\.29"):
        ISBI2012(tmp_path / "isbi2012", indices=[0, 30, 31])


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


def test_bad_volumes_are_refused_in_one_line(pngs, tmp_path):
    folder = write_volumes(tmp_path / "isbi2012", pngs, test=False)
    volume, labels = folder / "train-volume.tif", folder / "train-labels.tif"
    pages = tifffile.imread(volume)
    good_labels = tifffile.imread(labels)

    tifffile.imwrite(labels, good_labels[:29])
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(labels), "29 pages", "30", "one label page per image page")

    bad = good_labels.copy()
    bad[7, 0, :3] = (1, 2, 128)
    tifffile.imwrite(labels, bad)
    with pytest.raises(DataError) as e:
        ISBI2012(folder, indices=[6, 7])
    _one_line(e, str(labels), "page 7", "[0, 1, 2, 128, 255]", "expected only 0 (membrane) and 255 (cell interior)")
    assert len(ISBI2012(folder, indices=[6])) == 1  # only the pages asked for are checked

    labels.unlink()
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(volume), "train-labels.tif")
    tifffile.imwrite(labels, good_labels)

    colour = np.stack([pages, pages // 2, pages], axis=-1)
    tifffile.imwrite(volume, colour, photometric="rgb")
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(volume), "page 0", "colour", "8-bit grayscale")
    # RGB pages whose channels are equal are grey: converted, exactly.
    tifffile.imwrite(volume, np.stack([pages] * 3, axis=-1), photometric="rgb")
    assert np.array_equal(ISBI2012(folder, indices=[5]).image_array(0), pages[5])

    tifffile.imwrite(volume, pages.astype(np.uint16) * 257)
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(volume), "page 0", "16 or 32 bits", "8-bit grayscale")

    tifffile.imwrite(volume, pages[:, :100, :100])
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(labels), "pages of", "100x100", "expected the same")

    volume.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, str(volume), "cannot be read as a multi-page TIFF")

    volume.unlink()
    with pytest.raises(DataError) as e:
        ISBI2012(folder)
    _one_line(e, "train-volume.tif", "train/image/", "either layout")


def test_not_found_message_names_the_official_files(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXELWISE_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        dataset_dir(DataConfig(dataset="isbi2012", root=str(tmp_path)))
    msg = str(e.value)
    for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif", "train/image",
                 "https://imagej.net/events/isbi-2012-segmentation-challenge"):
        assert name in msg
    assert "convert" not in msg.lower() and "either" in msg
    with pytest.raises(DatasetNotFoundError) as e:  # the instance datasets read the PNG slices only
        dataset_dir(DataConfig(dataset="isbi_instances", root=str(tmp_path)))
    assert "train/image" in str(e.value) and "not yet" in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="annotations_trainval2017.zip"):
        dataset_dir(DataConfig(dataset="coco", root=str(tmp_path)))


def test_voc_found_as_the_official_archive_unpacks(tmp_path):
    from conftest import require_dataset

    src = require_dataset("voc-example")
    for where in (tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "voc" / "VOCdevkit" / "VOC2012"):
        for sub in ("JPEGImages", "SegmentationClass"):
            shutil.copytree(src / sub, where / sub)
        cfg = DataConfig(dataset="voc", root=str(tmp_path), train_split="all")
        ds = build_dataset(cfg, "train")
        assert ds.root_dir == where and len(ds) == 3 and ds.image_paths[0].parent == where / "JPEGImages"
    with pytest.raises(DatasetNotFoundError, match="VOCtrainval_11-May-2012.tar"):
        dataset_dir(DataConfig(dataset="voc", root=str(tmp_path / "empty")))


def test_train_and_eval_on_the_official_tiffs(pngs, tmp_path, capsys):
    write_volumes(tmp_path / "isbi2012", pngs)
    run = tmp_path / "run"
    common = ["--data-root", str(tmp_path), *TINY]
    # The crop-size check reads the page size from the volume.
    assert main(["train", "unet_isbi2012_cpu", "--output-dir", str(tmp_path / "big"), "--no-report", *common,
                 "-o", "data.augment.crop_size=4000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "crop_size=4000" in err and "page 0 of" in err and "train-volume.tif" in err and len(err.splitlines()) == 1
    assert main(["train", "unet_isbi2012_cpu", "--output-dir", str(run), "--no-report", *common]) == 0
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert main(["eval", "unet_isbi2012_cpu", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "m.json"),
                 *common]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_images"] == 1 and 0.0 <= metrics["pixel_acc"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "isbi2012").iterdir()) == ["test-volume.tif", "train-labels.tif",
                                                                        "train-volume.tif"]  # nothing written there


def test_the_demo_runs_on_the_official_tiffs(pngs, tmp_path, capsys):
    """`pixelwise demo --data-root` on the download as it comes: trains, evaluates and writes its predictions of the
    validation pages (named by slice, as for the PNGs)."""
    write_volumes(tmp_path / "data" / "isbi2012", pngs, test=False)
    assert main(["demo", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "demo"), *TINY[:-4],
                 "-o", "data.val_split=25-26", "-o", "infer.tile=128", "-o", "infer.tta=false"]) == 0
    out = capsys.readouterr().out
    assert "bundled" not in out  # the full data was found: no sample
    assert sorted(p.name for p in (tmp_path / "demo" / "predictions").glob("2?.png")) == ["25.png", "26.png"]
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["num_images"] == 2
