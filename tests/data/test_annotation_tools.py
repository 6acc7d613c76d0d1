"""LabelMe, YOLO and CVAT exports read where they lie, for both tasks: classes, painting order, the objects'
masks, and the mistakes users make (too few points, an unknown class, a class id outside the list)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import Config, apply_override
from pixelwise.data import DataError, build_dataset


def _cfg(root, dataset, *overrides):
    cfg = Config()
    rgb = [] if dataset.endswith("_instances") else ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    for o in (f"data.dataset={dataset}", f"data.root={root}", *rgb, *overrides):
        apply_override(cfg, o)
    return cfg


def _image(path, h=24, w=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(h * w).reshape(h, w) % 255).astype(np.uint8)).convert("RGB").save(path)


def _labelme(folder, name, shapes, h=24, w=32):
    _image(folder / f"{name}.png", h, w)
    (folder / f"{name}.json").write_text(json.dumps({"version": "5.4.1", "shapes": shapes, "imagePath": f"{name}.png",
                                                     "imageData": None, "imageHeight": h, "imageWidth": w}))


def _shape(label, points, kind="polygon", group=None):
    return {"label": label, "points": points, "shape_type": kind, "group_id": group, "flags": {}}


@pytest.fixture
def labelme(tmp_path):
    root = tmp_path / "labelme"
    _labelme(root / "train", "a", [_shape("cat", [[2, 2], [10, 2], [10, 10], [2, 10]]),
                                   _shape("dog", [[12, 4], [20, 12]], "rectangle"),
                                   _shape("dog", [[15, 6], [25, 6], [25, 20], [15, 20]]),  # painted over the first dog
                                   _shape("cat", [[26, 2], [30, 2], [30, 6]], group=1),
                                   _shape("cat", [[26, 10], [30, 10], [30, 14]], group=1),  # one cat in two parts
                                   _shape("tail", [[1, 1], [3, 3]], "line")])  # no area: not an object
    _labelme(root / "val", "b", [_shape("bird", [[0, 0], [8, 0], [8, 8]])])
    return tmp_path


def test_labelme_semantic_paints_classes_in_order_with_the_classes_of_every_split(labelme):
    ds = build_dataset(_cfg(labelme, "labelme").data, "train")
    assert ds.class_names == ["background", "bird", "cat", "dog"]  # sorted labels of train and val
    image, target = ds[0]
    mask = target["mask"].numpy()
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32)
    assert mask[5, 5] == 2 and mask[0, 0] == 0  # cat, background
    assert mask[8, 13] == 3 and mask[15, 20] == 3  # the rectangle dog and the polygon dog over it
    assert mask[3, 29] == 2 and mask[11, 29] == 2  # both parts of the grouped cat
    assert build_dataset(_cfg(labelme, "labelme").data, "val").class_names == ds.class_names


def test_labelme_instances_are_coco_instances_one_per_object_and_group(labelme):
    ds = build_dataset(_cfg(labelme, "labelme_instances").data, "train")
    _, target = ds[0]
    assert ds.class_names == ["__background__", "bird", "cat", "dog"]
    assert target["labels"].tolist() == [2, 3, 3, 2]  # cat, dog, dog, the two-part cat
    masks = target["masks"].numpy().astype(bool)
    assert masks[3][3, 29] and masks[3][11, 29] and masks[0][5, 5] and not masks[0][3, 29]
    assert target["boxes"][1].tolist() == [12.0, 4.0, 20.0, 12.0]


def test_labelme_mistakes_are_named_or_skipped(labelme):
    _labelme(labelme / "labelme" / "train", "c", [_shape("cat", [[1, 1], [5, 5]])])  # a two-point polygon
    with pytest.raises(DataError, match=r"c.json', shape 0: polygon with 4 coordinates .* \(at least 3 points\)"):
        build_dataset(_cfg(labelme, "labelme").data, "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(_cfg(labelme, "labelme", "data.skip_invalid=true").data, "train")
    assert len(ds) == 2 and "skipped 1 invalid object" in str(caught[0].message)
    with pytest.raises(DataError, match=r"class 'dog' is not among the classes \['cat'\]"):
        build_dataset(_cfg(labelme, "labelme", "data.classes=[cat]").data, "train")


def test_yolo_polygons_and_boxes_with_names_from_data_yaml(tmp_path):
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "x.png", 40, 40)
    _image(root / "images" / "train" / "y.png", 40, 40)  # no label file: an image without objects
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "x.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n1 0.75 0.75 0.2 0.2\n")
    (root / "data.yaml").write_text("names: {0: leaf, 1: bug}\n")
    semantic = build_dataset(_cfg(tmp_path, "yolo").data, "train")
    mask = semantic[0][1]["mask"].numpy()
    assert semantic.class_names == ["background", "leaf", "bug"]
    assert mask[10, 10] == 1 and mask[30, 30] == 2 and mask[2, 2] == 0 and semantic[1][1]["mask"].max() == 0
    instances = build_dataset(_cfg(tmp_path, "yolo_instances").data, "train")
    _, target = instances[0]
    assert target["labels"].tolist() == [1, 2] and len(instances[1][1]["labels"]) == 0
    assert target["boxes"][1].tolist() == pytest.approx([26.0, 26.0, 34.0, 34.0])
    (root / "labels" / "train" / "x.txt").write_text("5 0.1 0.1 0.5 0.1 0.5 0.5\n")
    with pytest.raises(DataError, match=r"x.txt', line 1: class id 5; expected an integer in \[0, 2\)"):
        build_dataset(_cfg(tmp_path, "yolo").data, "train")
    (root / "data.yaml").unlink()
    with pytest.raises(DataError, match="neither data.yaml nor classes.txt"):
        build_dataset(_cfg(tmp_path, "yolo").data, "train")


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>car</name><color>#ff0000</color></label>
    <label><name>road</name><color>#00ff00</color></label>
  </labels></task></meta>
  <image id="0" name="f.png" width="32" height="24">
    <polygon label="road" occluded="0" points="0,12;32,12;32,24;0,24" z_order="0"/>
    <box label="car" occluded="0" xtl="4" ytl="8" xbr="12" ybr="16" z_order="1"/>
    <mask label="car" occluded="0" rle="1,4,1" left="20" top="2" width="3" height="2" z_order="0"/>
  </image>
</annotations>
"""


def test_cvat_polygons_boxes_and_masks_painted_by_z_order(tmp_path):
    split = tmp_path / "cvat" / "train"
    _image(split / "images" / "f.png", 24, 32)
    (split / "annotations.xml").write_text(CVAT)
    ds = build_dataset(_cfg(tmp_path, "cvat").data, "train")
    mask = ds[0][1]["mask"].numpy()
    assert ds.class_names == ["background", "car", "road"]
    assert mask[14, 8] == 1 and mask[20, 20] == 2 and mask[5, 5] == 0  # the box (z 1) over the road (z 0)
    # CVAT's mask: runs over its 3 x 2 box, row by row, starting with background: 0 1 1 / 1 1 0
    assert mask[2, 20:23].tolist() == [0, 1, 1] and mask[3, 20:23].tolist() == [1, 1, 0]
    instances = build_dataset(_cfg(tmp_path, "cvat_instances").data, "train")
    _, target = instances[0]
    assert sorted(target["labels"].tolist()) == [1, 1, 2]
    (split / "annotations.xml").write_text(CVAT.replace('rle="1,4,1"', 'rle="1,4,9"'))
    with pytest.raises(DataError, match="mask runs summing to 14 over a 3 x 2 box"):
        build_dataset(_cfg(tmp_path, "cvat").data, "train")


def test_data_check_reads_an_annotation_tool_split(labelme, capsys):
    from pixelwise.cli import main

    assert main(["data", "check", "labelme", "--data-root", str(labelme), "-o", "data.mean=[0.5,0.5,0.5]",
                 "-o", "data.std=[0.25,0.25,0.25]"]) == 0
    out = capsys.readouterr().out
    assert "labelme, split train: 1 samples (semantic)" in out and "cat" in out and "problems: none" in out
