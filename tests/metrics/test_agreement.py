from __future__ import annotations

import pytest
import torch

from pixelwise.metrics.agreement import match_detections


def detections():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [5, 30, 15, 50]])
    masks = torch.zeros(3, 60, 60, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        m[y1:y2, x1:x2] = True
    return {"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.8, 0.7]), "masks": masks}


def test_a_reordering_is_full_agreement_and_a_missing_object_is_counted():
    ref = detections()
    order = torch.tensor([2, 0, 1])
    shuffled = {k: v[order] for k, v in ref.items()}
    got = match_detections([shuffled], [ref])
    assert got["matched"] == 3 and got["unmatched_ref"] == got["unmatched_det"] == 0
    assert got["box_iou_mean"] == got["mask_iou_min"] == 1.0
    fewer = {k: v[:2] for k, v in ref.items()}
    got = match_detections([fewer, ref], [ref, fewer])
    assert (got["matched"], got["unmatched_ref"], got["unmatched_det"]) == (4, 1, 1)


def test_labels_must_agree_and_masks_are_compared_per_pair():
    ref = detections()
    other = {k: v.clone() for k, v in ref.items()}
    other["labels"][1] = 3  # the same box under another label is not a match
    other["masks"][0, :, :5] = False  # half of the first mask
    got = match_detections([other], [ref])
    assert got["matched"] == 2 and got["unmatched_ref"] == 1 and got["unmatched_det"] == 1
    assert got["mask_iou_min"] == pytest.approx(0.5)
    probs = {**ref, "masks": ref["masks"].float()[:, None] * 0.7}  # torchvision's (D, 1, H, W) probabilities
    assert match_detections([probs], [ref])["mask_iou_mean"] == 1.0
    empty = {k: v[:0] for k, v in ref.items()}
    got = match_detections([empty], [empty])
    assert got["matched"] == 0 and got["box_iou_mean"] is None
    with pytest.raises(ValueError, match="1 images of detections against 2"):
        match_detections([ref], [ref, ref])
