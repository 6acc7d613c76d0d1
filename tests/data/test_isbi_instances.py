from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.data.isbi_instances import ANN_ID_STRIDE, ISBIInstances, to_coco


def label_png(isbi_full_dir, index: int) -> np.ndarray:
    with Image.open(isbi_full_dir / "train" / "label" / f"{index:02d}.png") as f:
        return np.array(f)


def test_slice0_instances_are_the_connected_cells(isbi_full_dir):
    ds = ISBIInstances(isbi_full_dir, indices="0-1")
    assert len(ds) == 2 and ds.names == ["00", "01"] and ds.category_ids == {1: 1}
    image, target = ds[0]
    regions, n = ndimage.label(label_png(isbi_full_dir, 0) == 255)
    assert isinstance(image, tv_tensors.Image) and image.shape == (1, 512, 512) and image.dtype == torch.float32
    masks, boxes = target["masks"], target["boxes"]
    assert n > 50 and masks.shape == (n, 512, 512) and masks.dtype == torch.uint8 and boxes.shape == (n, 4)
    assert isinstance(masks, tv_tensors.Mask) and isinstance(boxes, tv_tensors.BoundingBoxes)
    assert target["labels"].tolist() == [1] * n and not target["iscrowd"].any() and target["image_id"] == 0
    assert target["ann_ids"].tolist() == list(range(1, n + 1))
    covered = masks.numpy().sum(0)
    assert covered.max() == 1  # disjoint
    assert np.array_equal(covered > 0, regions > 0)
    assert target["area"].tolist() == masks.numpy().reshape(n, -1).sum(1).tolist()
    touching = 0
    for box, mask in zip(boxes.tolist(), masks.numpy()):
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight, COCO's pixel-edge convention
        touching += box[0] == 0 or box[1] == 0 or box[2] == 512 or box[3] == 512
    assert touching > 0  # border regions are kept
    assert ds[1][1]["ann_ids"][0] == ANN_ID_STRIDE + 1


def test_channels_min_area_and_flip(isbi_full_dir):
    ds = ISBIInstances(isbi_full_dir, indices=[0], channels=3, min_area=50)
    image, target = ds[0]
    assert image.shape == (3, 512, 512) and torch.equal(image[0], image[2])
    regions, _ = ndimage.label(label_png(isbi_full_dir, 0) == 255)
    areas = np.bincount(regions.ravel())[1:]
    assert len(target["labels"]) == int((areas >= 50).sum()) < len(areas)
    assert float(target["area"].min()) >= 50
    flipped = ISBIInstances(isbi_full_dir, indices=[0], min_area=50, transforms=v2.RandomHorizontalFlip(p=1.0))[0][1]
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    assert torch.equal(flipped["boxes"][:, 0], 512 - target["boxes"][:, 2])
    with pytest.raises(ValueError, match="channels=2"):
        ISBIInstances(isbi_full_dir, channels=2)


def test_to_coco_round_trip(isbi_full_dir):
    ds = ISBIInstances(isbi_full_dir, indices=[0, 3], min_area=10)
    coco = to_coco(ds)
    assert [img["id"] for img in coco["images"]] == [0, 3] and coco["categories"] == [{"id": 1, "name": "cell"}]
    assert coco["images"][1] == {"id": 3, "file_name": "03", "height": 512, "width": 512}
    for image_info, i in zip(coco["images"], range(len(ds))):
        _, target = ds[i]
        anns = [a for a in coco["annotations"] if a["image_id"] == image_info["id"]]
        assert [a["id"] for a in anns] == target["ann_ids"].tolist()
        decoded = mask_utils.decode([a["segmentation"] for a in anns]).transpose(2, 0, 1)
        assert np.array_equal(decoded, target["masks"].numpy())
        assert [a["area"] for a in anns] == target["area"].tolist()
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        assert xyxy == target["boxes"].tolist()
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_two_class_variant_splits_the_cells_at_the_median_training_area(isbi_full_dir):
    from pixelwise.data.isbi_instances import median_cell_area

    train = ISBIInstances(isbi_full_dir, indices="0-3")
    threshold = median_cell_area(train)
    sized = ISBIInstances(isbi_full_dir, indices="0-3", size_threshold=threshold)
    assert sized.num_classes == 2 and sized.class_names == ["__background__", "small", "large"]
    labels, areas = [], []
    for i in range(len(sized)):
        _, target = sized[i]
        labels += target["labels"].tolist()
        areas += target["area"].tolist()
    labels, areas = np.array(labels), np.array(areas)
    assert set(labels.tolist()) == {1, 2}
    assert (labels == 2).tolist() == (areas >= threshold).tolist()
    assert abs((labels == 1).mean() - 0.5) < 0.05  # the median halves the training cells
    assert {c["name"] for c in to_coco(sized)["categories"]} == {"small", "large"}
    with pytest.raises(ValueError, match="size_threshold"):
        ISBIInstances(isbi_full_dir, indices="0", size_threshold=0)
