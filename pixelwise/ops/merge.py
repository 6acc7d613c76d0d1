"""Detections of overlapping tiles merged into one set: greedy non-maximum merging, as SAHI does.

An object cut by a tile border is found whole in one tile (where the tiles overlap by more than the
object) and in part in its neighbour. The part lies inside the whole, so their intersection over the
smaller of the two (IoS) is near 1 while their IoU can be small: SAHI's default (GREEDYNMM, IOS, 0.5)
merges them where NMS on IoU would keep both. Greedy: in score order, each detection absorbs every
later one of its label whose IoS with it reaches the threshold (masks where there are masks, else
boxes); the merged detection has the union of the boxes and of the masks and the highest score.
Unlike SAHI, a later detection is compared with the merged one, not with the first alone.
"""
from __future__ import annotations

import torch

__all__ = ["merge_detections", "shift_detections"]


def _box_ios(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M,) intersection of box a (4,) with boxes b (M, 4) over the smaller of the two."""
    inter = (torch.minimum(a[2:], b[:, 2:]) - torch.maximum(a[:2], b[:, :2])).clamp(min=0).prod(-1)
    smaller = torch.minimum((a[2:] - a[:2]).clamp(min=0).prod(), (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1))
    return torch.where(smaller > 0, inter / smaller.clamp(min=1e-12), torch.zeros_like(inter))


def _mask_ios(mask: torch.Tensor, box: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(M,) IoS of one mask with each of masks, counted inside their boxes' intersection (masks lie in their boxes)."""
    out = torch.zeros(len(masks))
    area = mask.sum()
    for n in range(len(masks)):
        x1, y1 = torch.maximum(box[:2], boxes[n, :2]).floor().long().tolist()
        x2, y2 = torch.minimum(box[2:], boxes[n, 2:]).ceil().long().tolist()
        smaller = torch.minimum(area, masks[n].sum())
        if x2 > x1 and y2 > y1 and smaller > 0:
            out[n] = (mask[y1:y2, x1:x2] & masks[n, y1:y2, x1:x2]).sum() / smaller
    return out


def merge_detections(d: dict, threshold: float = 0.5) -> dict:
    """Greedy non-maximum merging of one image's detections (boxes (N, 4), labels, scores, optional masks
    (N, H, W) bool); returns the merged ones, by descending score.

    Each detection, best first, absorbs the later ones of its label that overlap it by `threshold` of the
    smaller (IoS), compared with what it has absorbed so far, until none is left: pieces of an object cut
    by two tile borders (a corner) join the whole even where they do not overlap each other.
    """
    order = torch.argsort(d["scores"], descending=True)
    d = {k: v[order] for k, v in d.items()}
    boxes, labels, masks = d["boxes"], d["labels"], d.get("masks")
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    out = {k: [] for k in d}
    for i in range(len(boxes)):
        if taken[i]:
            continue
        taken[i] = True
        box, mask = boxes[i].clone(), None if masks is None else masks[i].clone()
        while True:
            candidates = torch.where(~taken & (labels == labels[i]))[0]
            ios = _box_ios(box, boxes[candidates])
            candidates = candidates[ios > 0]
            if masks is not None:
                ios = _mask_ios(mask, box, masks[candidates], boxes[candidates])
            else:
                ios = ios[ios > 0]
            group = candidates[ios >= threshold]
            if not len(group):
                break
            taken[group] = True
            box[:2] = torch.minimum(box[:2], boxes[group, :2].min(0).values)
            box[2:] = torch.maximum(box[2:], boxes[group, 2:].max(0).values)
            if mask is not None:
                mask |= masks[group].any(0)
        out["boxes"].append(box)
        if mask is not None:
            out["masks"].append(mask)
        for k in d.keys() - {"boxes", "masks"}:
            out[k].append(d[k][i])
    return {k: torch.stack(v) if v else d[k][:0] for k, v in out.items()}


def shift_detections(d: dict, top: int, left: int, height: int, width: int) -> dict:
    """A tile's detections in the coordinates of the (height, width) image the tile starts at (top, left) in."""
    out = dict(d)
    out["boxes"] = d["boxes"] + d["boxes"].new_tensor([left, top, left, top])
    if "masks" in d:
        masks = d["masks"].new_zeros((len(d["masks"]), height, width))
        h, w = d["masks"].shape[-2:]
        masks[:, top:top + h, left:left + w] = d["masks"]
        out["masks"] = masks
    return out
