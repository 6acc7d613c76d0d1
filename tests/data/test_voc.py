from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pixelwise.config import DataConfig
from pixelwise.data import DataError, VOCSegmentation, build_dataset, dataset_meta, default_palette

IDS = ["2011_000003", "2011_000006", "2011_000025"]


def copy_voc(src, dst):
    """A writable copy of the images and class masks (the shared copy is read-only)."""
    for sub, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (dst / sub).mkdir(parents=True)
        for p in sorted((src / sub).glob(f"*{suffix}")):
            shutil.copyfile(p, dst / sub / p.name)
    return dst


def test_voc_loads_all_images(voc_dir):
    ds = VOCSegmentation(voc_dir, split="all")
    assert len(ds) == 3 and ds.names == IDS
    assert (ds.num_classes, ds.ignore_index, ds.in_channels) == (21, 255, 3)
    assert ds.class_names[0] == "background" and ds.class_names[15] == "person" and ds.class_names[20] == "tvmonitor"
    assert ds.image_paths[0] == voc_dir / "JPEGImages" / "2011_000003.jpg"
    assert ds.mask_paths[2] == voc_dir / "SegmentationClass" / "2011_000025.png"
    values = set()
    for i in range(len(ds)):
        image, target = ds[i]
        mask = target["mask"]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and set(target) == {"mask"}
        with Image.open(ds.image_paths[i]) as f:
            width, height = f.size
        assert image.shape == (3, height, width) and mask.shape == (height, width)
        assert 0.0 <= image.min() and image.max() <= 1.0
        values |= set(torch.unique(mask).tolist())
    assert values == {0, 5, 6, 7, 9, 15, 18, 255}  # as listed in the example's README.txt


def test_voc_mask_is_the_palette_index(voc_dir):
    ds = VOCSegmentation(voc_dir, split="all")
    table = np.array(default_palette(256), dtype=np.uint8)
    assert ds.palette == default_palette(21) and ds.palette[15] == (192, 128, 128)  # person
    for i in range(len(ds)):
        mask = ds[i][1]["mask"].numpy()
        with Image.open(ds.mask_paths[i]) as f:
            assert f.mode == "P"
            indices, colours = np.array(f), np.array(f.convert("RGB"))
        np.testing.assert_array_equal(mask, indices)
        # The file's colours are the VOC colour map of those indices, void 255 = (224, 224, 192).
        np.testing.assert_array_equal(table[mask], colours)


def test_voc_build_dataset_and_meta(voc_dir):
    cfg = DataConfig(dataset="voc", root=str(voc_dir.parent), path="voc-example", train_split="all", val_split="all")
    train = build_dataset(cfg, "train")
    assert isinstance(train, VOCSegmentation) and len(train) == 3 and train.sbd_root is None
    meta = dataset_meta(cfg)
    assert (meta["num_classes"], meta["ignore_index"], meta["in_channels"]) == (21, 255, 3)
    assert meta["class_names"][1] == "aeroplane" and meta["palette"][1] == (128, 0, 0)
    cfg.val_split = None  # default "val": the example has no ImageSets lists
    with pytest.raises(DataError, match=r"split 'val'.*ImageSets/Segmentation/val\.txt.*lists present: none"):
        build_dataset(cfg, "val")


def test_voc_split_lists(voc_dir, tmp_path):
    root = copy_voc(voc_dir, tmp_path / "voc")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("2011_000025\n\n2011_000003\n")
    assert VOCSegmentation(root, split="val").names == ["2011_000025", "2011_000003"]  # list order, blank lines skipped
    (lists / "dup.txt").write_text("2011_000003\n2011_000003\n")
    with pytest.raises(DataError, match=r"dup\.txt.*\['2011_000003'\] twice"):
        VOCSegmentation(root, split="dup")
    (lists / "more.txt").write_text("2011_000003\n2012_999999\n")
    with pytest.raises(DataError, match=r"1 of 2 ids in .*more\.txt.*no image file.*2012_999999\.jpg"):
        VOCSegmentation(root, split="more")
    with pytest.raises(DataError, match=r"split 'train'.*lists present: \['dup', 'more', 'val'\]"):
        VOCSegmentation(root, split="train")
    (root / "JPEGImages" / "2011_000006.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 ids have no image file.*JPEGImages/2011_000006\.jpg"):
        VOCSegmentation(root, split="all")
    with pytest.raises(DataError, match=r"JPEGImages.*is not a folder"):
        VOCSegmentation(tmp_path, split="all")


def test_voc_bad_masks(voc_dir, tmp_path):
    root = copy_voc(voc_dir, tmp_path / "voc")
    masks = root / "SegmentationClass"
    with Image.open(masks / "2011_000003.png") as f:
        f.convert("RGB").save(masks / "2011_000003.png")  # colours instead of indices
    with Image.open(masks / "2011_000006.png") as f:
        indices, palette = np.array(f), f.getpalette()
    indices[:2, :3], indices[5, 5] = 21, 30
    bad = Image.fromarray(indices)
    bad.putpalette(palette)
    bad.save(masks / "2011_000006.png")
    (masks / "2011_000025.png").write_bytes((voc_dir / "SegmentationClass" / "2011_000025.png").read_bytes()[:200])
    ds = VOCSegmentation(root, split="all")
    with pytest.raises(DataError, match=r"2011_000003\.png.*mode 'RGB'.*mode L or P"):
        ds[0]
    # Index 21 has a colour of no VOC class: a palette mask is read by its colours, so it is refused.
    with pytest.raises(DataError, match=r"2011_000006\.png.*palette PNG whose index 21 has colour \(128, 64, 128\)"):
        ds[1]
    with pytest.raises(DataError, match=r"2011_000025\.png.*cannot be read"):
        ds[2]


def test_voc_sbd_extra_labels(voc_dir, tmp_path):
    root = copy_voc(voc_dir, tmp_path / "VOC2012")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2011_000003\n")
    (lists / "val.txt").write_text("2011_000006\n")
    with Image.open(root / "SegmentationClass" / "2011_000025.png") as f:
        sbd_label = np.array(f)
    sbd_label[sbd_label == 255] = 0  # SBD labels have no void border
    (root / "SegmentationClass" / "2011_000025.png").unlink()  # only SBD labels this image
    aug = tmp_path / "sbd" / "SegmentationClassAug"
    aug.mkdir(parents=True)
    Image.fromarray(sbd_label).save(aug / "2011_000025.png")  # mode L, as in DeepLab's SegmentationClassAug
    Image.fromarray(np.zeros_like(sbd_label)).save(aug / "2011_000003.png")
    (tmp_path / "sbd" / "train_aug.txt").write_text(
        "/JPEGImages/2011_000003.jpg /SegmentationClassAug/2011_000003.png\n"
        "/JPEGImages/2011_000025.jpg /SegmentationClassAug/2011_000025.png\n"
    )
    ds = VOCSegmentation(root, split="train_aug", sbd_root=tmp_path / "sbd")
    assert ds.names == ["2011_000003", "2011_000025"]
    # VOC's own label wins where there is one.
    assert ds.mask_paths == [root / "SegmentationClass" / "2011_000003.png", aug / "2011_000025.png"]
    np.testing.assert_array_equal(ds[1][1]["mask"].numpy(), sbd_label)
    assert ds[1][0].shape[-2:] == sbd_label.shape
    assert VOCSegmentation(root, split="train", sbd_root=tmp_path / "sbd").names == ["2011_000003"]
    assert len(VOCSegmentation(root, split="all", sbd_root=tmp_path / "sbd")) == 3
    with pytest.raises(DataError, match=r"split 'train_aug'"):
        VOCSegmentation(root, split="train_aug")

    cfg = DataConfig(dataset="voc", root=str(tmp_path), path="VOC2012", train_split="train_aug", val_split="val")
    cfg.sbd_root = "sbd"  # relative to the data root, like data.path
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.sbd_root == tmp_path / "sbd" and len(train) == 2
    assert val.sbd_root is None and val.names == ["2011_000006"]  # SBD augments training only

    (tmp_path / "neither").mkdir()
    with pytest.raises(DataError, match=r"has neither SegmentationClassAug/ .* nor SBD's cls/"):
        VOCSegmentation(root, split="train", sbd_root=tmp_path / "neither")
