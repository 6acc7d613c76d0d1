from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import require_dataset
from scipy import ndimage

from pixelwise.data.coco import CocoInstances
from pixelwise.data.isbi_instances import ISBIInstances, to_coco
from pixelwise.metrics.coco import (
    BACKENDS, coco_evaluate, detections_to_results, masks_to_rle, rle_to_masks, stat_names,
)

KEYS = [f"{t}_{s}" for t in ("bbox", "segm") for s in stat_names()]


@pytest.fixture(scope="module")
def tiny():
    root = require_dataset("tiny-coco", full=True)  # the detections below are written for its objects
    with open(root / "annotations_instances.json") as f:
        gt = json.load(f)
    ds = CocoInstances(root / "annotations_instances.json", root / "images")
    targets = [ds[i][1] for i in range(len(ds))]
    return gt, ds, targets


def perfect(targets) -> list[dict]:
    dets = []
    for t in targets:
        keep = t["iscrowd"] == 0
        dets.append({"image_id": t["image_id"], "boxes": t["boxes"][keep], "labels": t["labels"][keep],
                     "scores": torch.ones(int(keep.sum())), "masks": t["masks"][keep]})
    return dets


def noisy(targets, num_classes: int, seed: int = 0) -> list[dict]:
    """Jittered boxes, eroded masks, random scores, some misses, wrong labels and false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for t in targets:
        h, w = t["masks"].shape[-2:]
        boxes, labels, masks = [], [], []
        for box, label, mask in zip(t["boxes"].tolist(), t["labels"].tolist(), t["masks"].numpy()):
            if rng.random() < 0.15:
                continue
            bw, bh = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            boxes.append(np.clip(np.asarray(box) + jitter, 0, [w, h, w, h]))
            labels.append(label if rng.random() < 0.9 else int(rng.integers(1, num_classes)))
            masks.append(ndimage.binary_erosion(mask, iterations=int(rng.integers(0, 4))))
        for _ in range(int(rng.integers(0, 4))):
            x1, y1 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
            x2, y2 = x1 + rng.uniform(5, 40), y1 + rng.uniform(5, 40)
            boxes.append(np.array([x1, y1, x2, y2]))
            labels.append(int(rng.integers(1, num_classes)))
            m = np.zeros((h, w), dtype=bool)
            m[int(y1):int(y2), int(x1):int(x2)] = True
            masks.append(m)
        n = len(boxes)
        dets.append({
            "image_id": t["image_id"], "boxes": np.asarray(boxes).reshape(n, 4), "labels": np.asarray(labels),
            "scores": rng.random(n), "masks": np.asarray(masks).reshape(n, h, w),
        })
    return dets


def test_rle_round_trip():
    masks = torch.rand(4, 30, 20) > 0.5
    rles = masks_to_rle(masks)
    assert len(rles) == 4 and rles[0]["size"] == [30, 20] and isinstance(rles[0]["counts"], str)
    assert np.array_equal(rle_to_masks(rles), masks.numpy())
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 1 zero, 2 ones, 3 zeros
    assert rle_to_masks([uncompressed]).tolist() == [[[False, True, False], [True, False, False]]]
    assert rle_to_masks([], size=(5, 6)).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="no RLEs and no size"):
        rle_to_masks([])
    with pytest.raises(ValueError, match=r"shape \(30, 20\); expected \(N, H, W\)"):
        masks_to_rle(masks[0])
    # numpy and non-bool masks (nonzero = inside) give pycocotools' own encoding; no masks give no RLEs
    from pycocotools import mask as mask_utils

    values = (torch.rand(3, 17, 23) * 3).floor().to(torch.uint8).numpy()
    want = mask_utils.encode(np.asfortranarray(values.transpose(1, 2, 0) != 0, dtype=np.uint8))
    assert [r["counts"] for r in masks_to_rle(values)] == [r["counts"].decode() for r in want]
    assert masks_to_rle(torch.as_tensor(values).float()) == masks_to_rle(values)
    assert masks_to_rle(torch.zeros(0, 5, 6, dtype=torch.bool)) == []
    # objects: a box, one touching the first pixel, one the last column, an empty and a full mask
    objects = torch.zeros(5, 40, 31, dtype=torch.bool)
    objects[0, 5:12, 8:20] = objects[1, :3, :2] = objects[2, 30:, 29:] = objects[4] = True
    objects[0, 7, 9] = False
    want = mask_utils.encode(np.asfortranarray(objects.numpy().transpose(1, 2, 0), dtype=np.uint8))
    assert [r["counts"] for r in masks_to_rle(objects)] == [r["counts"].decode() for r in want]


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_one(tiny, backend):
    gt, ds, targets = tiny
    scores = coco_evaluate(gt, perfect(targets), ds.category_ids, backend=backend)
    assert sorted(scores) == sorted(KEYS)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert scores[f"bbox_{key}"] == pytest.approx(1.0) and scores[f"segm_{key}"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_score_zero(tiny, backend):
    gt, ds, targets = tiny
    for dets in ([], [{"image_id": t["image_id"], "boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                       "scores": torch.zeros(0), "masks": torch.zeros(0, *t["masks"].shape[1:])} for t in targets]):
        scores = coco_evaluate(gt, dets, ds.category_ids, backend=backend)
        assert all(v == 0.0 for v in scores.values()), scores


def test_backends_agree_on_noisy_detections(tiny, tmp_path):
    gt, ds, targets = tiny
    dets = noisy(targets, ds.num_classes + 1)
    fast = coco_evaluate(gt, dets, ds.category_ids, backend="faster_coco_eval")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    reference = coco_evaluate(path, dets, ds.category_ids, backend="pycocotools")
    for key in KEYS:
        assert fast[key] == pytest.approx(reference[key], abs=1e-6), key
    assert 0.2 < fast["bbox_AP"] < 0.9 and 0.2 < fast["segm_AP"] < 0.9
    assert fast["segm_AP50"] > fast["segm_AP75"] and all(math.isfinite(v) for v in fast.values())


def test_matches_plain_pycocotools_pipeline(tiny):
    """COCO(file) + loadRes + COCOeval.summarize(), the way the COCO API's own demo scores results."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, ds, targets = tiny
    dets = noisy(targets, ds.num_classes + 1, seed=1)
    ours = coco_evaluate(gt, dets, ds.category_ids, backend="pycocotools")
    results = detections_to_results(gt, dets, ds.category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(require_dataset("tiny-coco") / "annotations_instances.json"))
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(results[iou_type]), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            for name, value in zip(stat_names(), evaluator.stats):
                assert ours[f"{iou_type}_{name}"] == pytest.approx(value, abs=1e-12), (iou_type, name)


def test_mask_formats_and_errors(tiny):
    gt, ds, targets = tiny
    dets = perfect(targets)
    # Soft (N, 1, H, W) probabilities are binarised at 0.5; RLE lists are taken as they are.
    soft = [dict(d, masks=d["masks"][:, None].float() * 0.6) for d in dets]
    rle = [dict(d, masks=masks_to_rle(d["masks"])) for d in dets]
    for variant in (soft, rle):
        assert coco_evaluate(gt, variant, ds.category_ids, iou_types=("segm",))["segm_AP"] == pytest.approx(1.0)
    bad = dict(dets[0], labels=dets[0]["labels"] + 100)
    with pytest.raises(ValueError, match=r"labels \[1\d\d.*category_ids does not map"):
        coco_evaluate(gt, [bad], ds.category_ids)
    with pytest.raises(ValueError, match="image_id=7, which is not in the ground truth"):
        coco_evaluate(gt, [dict(dets[0], image_id=7)], ds.category_ids)
    small = dict(dets[0], masks=dets[0]["masks"][:, :10, :10])
    with pytest.raises(ValueError, match=r"masks of image_id=\d+ are \[\(10, 10\)\].*paste masks"):
        coco_evaluate(gt, [small], ds.category_ids)
    with pytest.raises(ValueError, match="backend='detectron'"):
        coco_evaluate(gt, dets, ds.category_ids, backend="detectron")


@pytest.mark.parametrize("backend", BACKENDS)
def test_isbi_ground_truth_scores_itself(isbi_full_dir, backend):
    ds = ISBIInstances(isbi_full_dir, indices=[0, 1])
    targets = [ds[i][1] for i in range(len(ds))]
    gt, dets = to_coco(ds), perfect(targets)
    most = max(len(t["labels"]) for t in targets)
    assert most > 100  # more cells than COCO's 100 detections per image
    scores = coco_evaluate(gt, dets, ds.category_ids, backend=backend, max_dets=most)
    assert scores["segm_AP"] == pytest.approx(1.0) and scores["bbox_AP"] == pytest.approx(1.0)
    assert scores[f"segm_AR{most}"] == pytest.approx(1.0)
    capped = coco_evaluate(gt, dets, ds.category_ids, backend=backend, iou_types=("segm",))
    assert capped["segm_AR100"] < 1.0 and capped["segm_AP"] < 1.0


def test_more_than_255_detections_per_image():
    # pycocotools' area() overflows a uint8 count beyond 255 RLEs under numpy 2; ISBI slices need up to 300.
    masks = np.zeros((300, 64, 64), dtype=bool)
    boxes = np.zeros((300, 4))
    for i in range(300):
        y, x = i % 60, (i // 60) * 10
        masks[i, y:y + 4, x:x + 4] = True
        boxes[i] = (x, y, x + 4, y + 4)
    gt = {"images": [{"id": 1, "height": 64, "width": 64}], "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0,
                           "segmentation": masks_to_rle(masks[:1])[0]}]}
    det = {"image_id": 1, "boxes": boxes, "scores": np.linspace(1, 0.1, 300), "labels": np.ones(300, dtype=int),
           "masks": masks_to_rle(masks)}
    scores = coco_evaluate(gt, [det], {1: 1}, max_dets=300)
    assert scores["segm_AP"] == pytest.approx(1.0) and scores["bbox_AP"] == pytest.approx(1.0)
