"""Cityscapes, ADE20K and the cell tracking challenge's U-Net data sets, each read from tiny files written here
in its official layout and encoding: classes, ignore values, splits and the mistakes users make."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import Config, apply_override
from pixelwise.config import ConfigError
from pixelwise.data import DataError, build_dataset, dataset_meta


def _cfg(root, dataset, *overrides):
    cfg = Config()
    for o in (f"data.dataset={dataset}", f"data.root={root}", *overrides):
        apply_override(cfg, o)
    return cfg


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def cityscapes(tmp_path):
    stem = "aachen_000000_000019"
    root = tmp_path / "cityscapes"
    _save(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", np.zeros((16, 32, 3), np.uint8))
    ids = np.full((16, 32), 7, np.uint8)  # road
    ids[0:4] = 0  # unlabeled
    ids[4:8, 0:8] = 26  # cars
    ids[4:8, 8:16] = 26
    ids[8:12, 0:4] = 24  # a person group (annotated together)
    ids[12:16, 30:32] = 5  # dynamic: not evaluated
    _save(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
    inst = ids.astype(np.uint16)
    inst[4:8, 0:8], inst[4:8, 8:16] = 26000, 26001
    _save(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_instanceIds.png", inst)
    return tmp_path


def test_cityscapes_semantic_maps_label_ids_to_the_19_train_ids(cityscapes):
    cfg = _cfg(cityscapes, "cityscapes", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]")
    ds = build_dataset(cfg.data, "train")
    mask = ds[0][1]["mask"].numpy()
    assert dataset_meta(cfg.data)["num_classes"] == 19 and ds.class_names[13] == "car"
    assert mask[14, 10] == 0 and mask[5, 3] == 13 and mask[9, 1] == 11  # road, car, person
    assert mask[1, 1] == 255 and mask[13, 31] == 255  # unlabeled and dynamic are ignored
    with pytest.raises(ConfigError, match="data.weight_map=true: 'cityscapes' has 19 classes"):
        build_dataset(_cfg(cityscapes, "cityscapes", "data.weight_map=true").data, "train")


def test_cityscapes_instances_are_the_8_classes_objects_without_groups(cityscapes):
    ds = build_dataset(_cfg(cityscapes, "cityscapes_instances").data, "train")
    _, target = ds[0]
    assert ds.class_names[3] == "car" and ds.category_ids[3] == 26
    assert target["labels"].tolist() == [3, 3]  # two cars; the person group is left out
    assert target["boxes"].tolist() == [[0.0, 4.0, 8.0, 8.0], [8.0, 4.0, 16.0, 8.0]]
    assert target["masks"].sum((1, 2)).tolist() == [32, 32]


def test_cityscapes_names_a_missing_annotation(cityscapes):
    extra = cityscapes / "cityscapes" / "leftImg8bit" / "train" / "bonn" / "bonn_000000_000019_leftImg8bit.png"
    _save(extra, np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(DataError, match="bonn_000000_000019_leftImg8bit.png' has no annotation; expected .*"
                                        "bonn_000000_000019_gtFine_labelIds.png"):
        build_dataset(_cfg(cityscapes, "cityscapes").data, "train")


def test_ade20k_ignores_other_and_numbers_the_150_classes_from_0(tmp_path):
    root = tmp_path / "ADEChallengeData2016"  # the zip unpacked under the data root, as it comes
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(_mkdir(root / "images" / "training") / "ADE_train_00000001.jpg")
    annotation = np.zeros((8, 8), np.uint8)
    annotation[:, 4:] = 1  # wall
    annotation[4:, 4:] = 150  # flag
    _save(root / "annotations" / "training" / "ADE_train_00000001.png", annotation)
    cfg = _cfg(tmp_path, "ade20k", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]")
    ds = build_dataset(cfg.data, "training")
    image, target = ds[0]
    assert image.shape == (3, 8, 8)  # a grey JPEG among colour ones is repeated to RGB
    mask = target["mask"].numpy()
    assert mask[0, 0] == 255 and mask[0, 5] == 0 and mask[5, 5] == 149
    assert ds.class_names[0] == "wall" and ds.class_names[149] == "flag" and len(ds.class_names) == 150
    annotation[0, 0] = 151
    _save(root / "annotations" / "training" / "ADE_train_00000001.png", annotation)
    with pytest.raises(DataError, match="ADE_train_00000001.png.*151"):
        build_dataset(cfg.data, "training")[0]


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_cell_tracking_separates_touching_cells_and_weights_their_border(tmp_path):
    root = tmp_path / "PhC-C2DH-U373"
    frame = np.zeros((32, 32), np.uint16)
    frame[8:24, 4:28] = 4000
    frame[0, 0] = 1000
    _save(root / "01" / "t000.tif", frame)
    _save(root / "01" / "t001.tif", frame)  # not annotated: not a sample
    seg = np.zeros((32, 32), np.uint16)
    seg[8:24, 4:16], seg[8:24, 16:28] = 1, 2  # two cells touching along column 15 / 16
    _save(root / "01_GT" / "SEG" / "man_seg000.tif", seg)
    cfg = _cfg(tmp_path, "phc-c2dh-u373", "data.weight_map=true")
    ds = build_dataset(cfg.data, "train")
    assert len(ds) == 1 and ds.class_names == ["background", "cell"]
    image, target = ds[0]
    assert image.shape == (1, 32, 32) and float(image.min()) == 0.0 and float(image.max()) == 1.0
    mask, weight = target["mask"].numpy(), target["weight"].numpy()
    assert mask[16, 10] == 1 and mask[16, 20] == 1
    assert mask[16, 15] == 0 and mask[16, 16] == 0  # the cells are kept apart by background
    assert weight[16, 15] > 5 * weight[2, 2]  # the border between them weighs most (w0 = 10)
    with pytest.raises(DataError, match=r"split '03'.*|03' is not a folder"):
        build_dataset(cfg.data, "03")


def test_pascal_context_keeps_fcns_59_classes_and_makes_the_rest_background(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "pascal_context"
    (root / "trainval").mkdir(parents=True)
    (root / "labels.txt").write_text("1: accordion\n2: aeroplane\n3: air conditioner\n4: potted plant\n")
    (root / "59_labels.txt").write_text("1: aeroplane\n2: pottedplant\n")  # names match with spaces removed
    (root / "train.txt").write_text("2008_000002\n")
    _save(root / "JPEGImages" / "2008_000002.jpg", np.zeros((6, 8, 3), np.uint8))
    label = np.array([[0, 1, 2, 3, 4, 4, 2, 1]] * 6, np.uint16)
    savemat(root / "trainval" / "2008_000002.mat", {"LabelMap": label})
    cfg = _cfg(tmp_path, "pascal_context", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]")
    ds = build_dataset(cfg.data, "train")
    assert ds.class_names == ["background", "aeroplane", "pottedplant"] and ds.num_classes == 60
    assert ds[0][1]["mask"].numpy()[0].tolist() == [0, 0, 1, 0, 2, 2, 1, 0]
    savemat(root / "trainval" / "2008_000002.mat", {"LabelMap": label + 10})
    with pytest.raises(DataError, match="2008_000002.mat' has label ids up to 14; labels.txt has 4 classes"):
        ds[0]


def test_nyud_reads_40_classes_and_adds_log_depth_as_a_fourth_channel(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "nyud"
    _save(root / "data" / "images" / "img_5001.png", np.zeros((6, 8, 3), np.uint8))
    depth = np.full((6, 8), 1000, np.uint16)  # 1 m
    _save(root / "data" / "depth" / "img_5001.png", depth)
    (root / "segmentation").mkdir()
    label = np.zeros((6, 8), np.uint8)
    label[:, 4:] = 40
    savemat(root / "segmentation" / "img_5001.mat", {"segmentation": label})
    (root / "train.txt").write_text("5001\n")
    rgb = build_dataset(_cfg(tmp_path, "nyud", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]").data, "train")
    image, target = rgb[0]
    assert image.shape == (3, 6, 8) and target["mask"][0].tolist() == [255] * 4 + [39] * 4
    cfg = _cfg(tmp_path, "nyud", "data.mean=[0.5,0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2,0.2]")
    assert dataset_meta(cfg.data)["in_channels"] == 4
    raw = build_dataset(cfg.data, "train")
    raw.transforms = None
    image, _ = raw[0]
    assert image.shape == (4, 6, 8) and float(image[3, 0, 0]) == pytest.approx(0.75)  # log(1000) / log(10000)
    _save(tmp_path / "nyud" / "data" / "hha" / "img_5001.png", np.full((6, 8, 3), 200, np.uint8))
    hha = build_dataset(_cfg(tmp_path, "nyud_hha", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]").data,
                        "train")
    hha.transforms = None
    assert hha.image_paths[0].parent.name == "hha" and float(hha[0][0].mean()) == pytest.approx(200 / 255)


def test_gatech_splits_videos_75_25_in_natural_order_and_ignores_void(tmp_path):
    root = tmp_path / "gatech"
    for video in ("v1", "v2", "v3", "v10"):  # natural order: v1 v2 v3 v10 -> train v1 v2 v3, val v10
        for frame in (1, 2):
            _save(root / "Images" / "Original" / f"{video}_{frame}.png", np.zeros((4, 6, 3), np.uint8))
            truth = np.full((4, 6), 2, np.uint8)  # ground
            truth[0] = 0  # void
            _save(root / "Images" / "Ground_Truth" / f"{video}_{frame}.png", truth)
    cfg = _cfg(tmp_path, "gatech", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]")
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert {n.split("_")[0] for n in train.names} == {"v1", "v2", "v3"} and val.names == ["v10_1", "v10_2"]
    mask = train[0][1]["mask"].numpy()
    assert mask[0, 0] == 255 and mask[1, 0] == 1 and train.class_names[1] == "ground"
    (root / "Images" / "Ground_Truth" / "v10_2.png").unlink()
    with pytest.raises(DataError, match="v10_2.png' has no ground truth"):
        build_dataset(cfg.data, "val")
