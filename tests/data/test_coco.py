from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_dataset
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.data.coco import CocoInstances, instance_fields
from pixelwise.data.io import DataError

CROWD_ANN_ID = 900100184613  # the one crowd RLE of tiny-coco, on image 184613
CROWD_PIXELS = 7378  # pixels of its mask (its JSON area says 8340)
# Polygons with slivers thinner than a pixel: their bbox (the vertices' extent) exceeds the decoded mask by > 1 px.
SLIVER_ANN_IDS = {88176, 125310, 173331, 699725, 707420, 1107477, 1130359, 1280839, 1522056, 1892604}


@pytest.fixture
def coco_dir() -> Path:
    return require_dataset("tiny-coco")


@pytest.fixture
def coco_full_dir() -> Path:
    return require_dataset("tiny-coco", full=True)  # its counts, crowd region and annotation ids


@pytest.fixture
def coco_json(coco_dir) -> dict:
    with open(coco_dir / "annotations_instances.json") as f:
        return json.load(f)


@pytest.fixture
def tiny(coco_dir) -> CocoInstances:
    return CocoInstances(coco_dir / "annotations_instances.json", coco_dir / "images")


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def extent(mask: torch.Tensor) -> list[int]:
    """[x1, y1, x2, y2] of a mask's pixels, x2 / y2 one past the last (as COCO boxes)."""
    ys, xs = np.nonzero(np.asarray(mask))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def one_image_json(coco_json: dict, annotations: list[dict]) -> dict:
    """tiny-coco's first image with the given annotations."""
    image = coco_json["images"][0]
    anns = [dict(a, image_id=image["id"], id=k, category_id=a.get("category_id", 1), iscrowd=a.get("iscrowd", 0))
            for k, a in enumerate(annotations, start=1)]
    return {"images": [image], "annotations": anns, "categories": coco_json["categories"]}


def test_tiny_coco_counts_types_and_remapping(tiny, coco_json, coco_full_dir):
    assert len(tiny) == 16 and tiny.num_classes == 80 and len(tiny.class_names) == 81
    assert tiny.class_names[0] == "__background__" and tiny.class_names[1] == "person"
    assert tiny.class_names[80] == "toothbrush" and tiny.category_ids[80] == 90 and tiny.category_ids[12] == 13
    assert sorted(tiny.category_ids.values()) == sorted(c["id"] for c in coco_json["categories"])
    per_image = Counter(a["image_id"] for a in coco_json["annotations"])
    category_of = {a["id"]: a["category_id"] for a in coco_json["annotations"]}
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco_json["images"]}
    total = 0
    for i in range(len(tiny)):
        image, target = tiny[i]
        image_id = target["image_id"]
        n, (h, w) = per_image[image_id], sizes[image_id]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, h, w)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, masks = target["boxes"], target["masks"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert boxes.dtype == torch.float32 and boxes.shape == (n, 4) and tuple(boxes.canvas_size) == (h, w)
        assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (n, h, w)
        for key in ("labels", "iscrowd", "ann_ids"):
            assert target[key].dtype == torch.int64 and target[key].shape == (n,)
        assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
        labels = target["labels"].tolist()
        assert all(1 <= k <= 80 for k in labels)
        assert [tiny.category_ids[k] for k in labels] == [category_of[a] for a in target["ann_ids"].tolist()]
        total += n
    assert total == 197


def test_crowd_kept_or_dropped(tiny, coco_full_dir, coco_json):
    crowd = next(a for a in coco_json["annotations"] if a["iscrowd"])
    i = tiny.image_ids.index(crowd["image_id"])
    _, target = tiny[i]
    j = target["ann_ids"].tolist().index(CROWD_ANN_ID)
    assert target["iscrowd"].tolist().count(1) == 1 and int(target["iscrowd"][j]) == 1
    # Its JSON area (8340) is not its RLE's pixel count (7378); the target keeps the JSON value, as COCO eval uses it.
    assert int(target["masks"][j].sum()) == CROWD_PIXELS and float(target["area"][j]) == crowd["area"] == 8340
    assert target["boxes"][j].tolist() == [0.0, 35.0, 481.0, 185.0]
    dropped = CocoInstances(coco_full_dir / "annotations_instances.json", coco_full_dir / "images", drop_crowd=True)
    _, target = dropped[i]
    assert CROWD_ANN_ID not in target["ann_ids"].tolist() and not target["iscrowd"].any()
    assert sum(len(dropped[k][1]["labels"]) for k in range(len(dropped))) == 196


def test_polygon_boxes_match_mask_extent(tiny, coco_full_dir, coco_json):
    polygons = {a["id"]: a["segmentation"] for a in coco_json["annotations"] if not a["iscrowd"]}
    tight = CocoInstances(coco_full_dir / "annotations_instances.json", coco_full_dir / "images", boxes_from_masks=True)
    off = set()
    for i in range(len(tiny)):
        _, target = tiny[i]
        _, tight_target = tight[i]
        assert torch.equal(tight_target["masks"], target["masks"])
        for ann_id, box, tight_box, mask in zip(target["ann_ids"].tolist(), target["boxes"], tight_target["boxes"],
                                                target["masks"]):
            assert np.asarray(mask).any()
            assert tight_box.tolist() == extent(mask)
            if ann_id not in polygons:
                continue
            xs = [x for p in polygons[ann_id] for x in p[0::2]]
            ys = [y for p in polygons[ann_id] for y in p[1::2]]
            assert np.allclose(box.tolist(), [min(xs), min(ys), max(xs), max(ys)], atol=0.11)  # JSON bbox rounding
            if not np.allclose(box.tolist(), extent(mask), atol=1.0):
                off.add(ann_id)
    assert off == SLIVER_ANN_IDS  # the other 186 polygons' boxes are within 1 pixel of their masks


def test_compressed_and_uncompressed_rle_agree(tmp_path, coco_full_dir, coco_json):
    data = copy.deepcopy(coco_json)
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    h, w = crowd["segmentation"]["size"]
    rle = mask_utils.frPyObjects(crowd["segmentation"], h, w)
    crowd["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    compressed = CocoInstances(write_json(tmp_path / "c.json", data), coco_full_dir / "images")
    i = compressed.image_ids.index(crowd["image_id"])
    original = CocoInstances(coco_full_dir / "annotations_instances.json", coco_full_dir / "images")
    assert torch.equal(compressed[i][1]["masks"], original[i][1]["masks"])
    target = compressed[i][1]
    mask = target["masks"][target["ann_ids"].tolist().index(crowd["id"])]
    assert mask.shape == (h, w) and int(mask.sum()) == CROWD_PIXELS


def test_voc_example_coco_format():
    root = require_dataset("voc-example") / "coco_format"
    ds = CocoInstances(root / "annotations.json", root)
    assert len(ds) == 3 and ds.names == ["2011_000003", "2011_000025", "2011_000006"]
    # labelme writes a "_background_" category with id 0: it is an ordinary category here, label 1.
    assert ds.num_classes == 21 and ds.category_ids[1] == 0 and ds.class_names[16] == "person"
    counts, labels = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        counts.append(len(target["labels"]))
        labels += target["labels"].tolist()
        assert image.shape[0] == 3 and target["masks"].shape[1:] == image.shape[1:]
        for box, mask in zip(target["boxes"], target["masks"]):
            assert np.allclose(box.tolist(), extent(mask), atol=1.0)
    assert counts == [3, 3, 6]
    assert Counter(ds.category_ids[k] for k in labels) == {15: 6, 6: 2, 5: 1, 7: 1, 9: 1, 18: 1}


def test_image_without_annotations_is_kept(tmp_path, coco_full_dir, coco_json):
    data = copy.deepcopy(coco_json)
    extra = dict(data["images"][0], id=1)
    data["images"].append(extra)
    ds = CocoInstances(write_json(tmp_path / "a.json", data), coco_full_dir / "images",
                       transforms=v2.RandomHorizontalFlip(p=1.0))
    assert len(ds) == 17 and ds.image_ids[-1] == 1
    image, target = ds[16]
    h, w = extra["height"], extra["width"]
    assert image.shape == (3, h, w) and target["image_id"] == 1
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, h, w)
    assert target["labels"].shape == target["iscrowd"].shape == target["area"].shape == target["ann_ids"].shape == (0,)
    subset = CocoInstances(tmp_path / "a.json", coco_full_dir / "images", image_ids=[1, 391895])
    assert subset.image_ids == [1, 391895] and len(subset[1][1]["labels"]) == 4


TRIANGLE = [[10, 10, 20, 10, 20, 20]]


@pytest.mark.parametrize(
    "annotation, message",
    [
        ({"bbox": [10, 10, 0, 5], "segmentation": TRIANGLE}, r"degenerate box bbox=\[10, 10, 0, 5\]"),
        ({"bbox": [700, 10, 5, 5], "segmentation": TRIANGLE}, r"degenerate box bbox=\[700, 10, 5, 5\]"),
        ({"bbox": [10, 10, 10, 10], "segmentation": [[10, 10, 20, 10]]}, r"polygon with 4 coordinates"),
        ({"bbox": [10, 10, 10, 10], "segmentation": [[10, 10, 15, 15, 20, 20]]},
         r"polygon \[10, 10, 15, 15, 20, 20\] has zero area"),
        ({"bbox": [10, 10, 10, 10], "segmentation": {"size": [10, 10], "counts": [100]}}, r"RLE size \[10, 10\]"),
    ],
)
def test_degenerate_annotations(tmp_path, coco_dir, coco_json, annotation, message):
    good = {"bbox": [10, 10, 10, 10], "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]}
    path = write_json(tmp_path / "bad.json", one_image_json(coco_json, [good, annotation]))
    file_name = coco_json["images"][0]["file_name"]
    with pytest.raises(DataError, match=rf"annotation id 2 \(image '{file_name}'.*{message}"):
        CocoInstances(path, coco_dir / "images")
    with pytest.warns(UserWarning, match="skipped 1 invalid annotation"):
        ds = CocoInstances(path, coco_dir / "images", skip_invalid=True)
    assert len(ds.skipped) == 1 and ds[0][1]["ann_ids"].tolist() == [1]


def test_unknown_category_and_missing_images(tmp_path, coco_dir, coco_json):
    data = one_image_json(coco_json, [{"bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6]], "category_id": 12}])
    with pytest.raises(DataError, match="category_id=12, which is not among the categories"):
        CocoInstances(write_json(tmp_path / "a.json", data), coco_dir / "images")
    with pytest.raises(DataError, match="missing under .* is image_dir the folder"):
        CocoInstances(coco_dir / "annotations_instances.json", coco_dir)


def test_horizontal_flip_moves_image_boxes_and_masks(coco_dir):
    # Tight boxes, so that every flipped box must be exactly its flipped mask's extent.
    plain = CocoInstances(coco_dir / "annotations_instances.json", coco_dir / "images", boxes_from_masks=True)
    flipped = CocoInstances(coco_dir / "annotations_instances.json", coco_dir / "images", boxes_from_masks=True,
                            transforms=v2.Compose([v2.RandomHorizontalFlip(p=1.0)]))
    for i in range(len(plain)):  # image 2 holds the crowd RLE
        image, target = plain[i]
        fimage, ftarget = flipped[i]
        w = image.shape[-1]
        assert isinstance(fimage, tv_tensors.Image) and torch.equal(fimage, image.flip(-1))
        assert isinstance(ftarget["masks"], tv_tensors.Mask) and torch.equal(ftarget["masks"], target["masks"].flip(-1))
        assert isinstance(ftarget["boxes"], tv_tensors.BoundingBoxes)
        expected = target["boxes"].clone()
        expected[:, 0], expected[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
        assert torch.equal(ftarget["boxes"], expected)
        for key in ("labels", "iscrowd", "area", "ann_ids", "image_id"):
            assert torch.equal(torch.as_tensor(ftarget[key]), torch.as_tensor(target[key]))
        for box, mask in zip(ftarget["boxes"], ftarget["masks"]):
            assert box.tolist() == extent(mask)


def test_crop_and_sanitize_keep_instances_aligned(coco_full_dir):
    transforms = v2.Compose([
        v2.RandomCrop((200, 200)),
        v2.SanitizeBoundingBoxes(min_size=2, labels_getter=instance_fields),
    ])
    ds = CocoInstances(coco_full_dir / "annotations_instances.json", coco_full_dir / "images", transforms=transforms)
    torch.manual_seed(0)
    full = CocoInstances(coco_full_dir / "annotations_instances.json", coco_full_dir / "images")
    for i in range(4):
        image, target = ds[i]
        n = len(target["boxes"])
        assert image.shape == (3, 200, 200) and target["masks"].shape == (n, 200, 200)
        assert all(len(target[k]) == n for k in ("labels", "iscrowd", "area", "ann_ids"))
        assert n <= len(full[i][1]["boxes"])
