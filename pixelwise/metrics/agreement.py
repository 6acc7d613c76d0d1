"""How far two sets of detections of the same images agree: matched pairs, not list positions.

Two runs of one model (fp32 and bf16, PyTorch and an exported graph) can give the same objects in
another order, or one near-tie more or less: comparing detection i with detection i then counts a
reordering as a disagreement. `match_detections` pairs them instead, greedily in the reference's
score order, each with the unmatched detection of the same label that overlaps it most (box IoU at
least `min_iou`), and reports the IoU of the boxes and of the masks of every pair and what is left.
"""
from __future__ import annotations

import torch

from pixelwise.ops.boxes import box_iou

__all__ = ["match_detections"]


def _masks(d: dict) -> torch.Tensor | None:
    m = d.get("masks")
    if m is None:
        return None
    # ours: (D, H, W) bool; torchvision: (D, 1, H, W) probabilities, thresholded at 0.5 as its users do
    return m if m.dtype == torch.bool else (m > 0.5).reshape(len(m), *m.shape[-2:])


def match_detections(dets: list[dict], refs: list[dict], min_iou: float = 0.5) -> dict:
    """Agreement of `dets` with `refs`, one dict (boxes, labels, scores, optional masks) per image.

    Returns matched (pairs), unmatched_ref, unmatched_det, box_iou_mean / box_iou_min and, where both
    have masks, mask_iou_mean / mask_iou_min over the pairs (None without pairs).
    """
    if len(dets) != len(refs):
        raise ValueError(f"match_detections: {len(dets)} images of detections against {len(refs)} of references")
    box_ious, mask_ious, unmatched_det = [], [], 0
    for det, ref in zip(dets, refs):
        ious = box_iou(ref["boxes"].float(), det["boxes"].float())
        ious[ref["labels"][:, None] != det["labels"][None, :]] = -1
        dm, rm = _masks(det), _masks(ref)
        free = torch.ones(len(det["boxes"]), dtype=torch.bool)
        for r in torch.argsort(ref["scores"], descending=True).tolist():
            row = torch.where(free, ious[r], torch.full_like(ious[r], -1))
            if len(row) == 0 or row.max() < min_iou:
                continue
            d = int(row.argmax())
            free[d] = False
            box_ious.append(float(ious[r, d]))
            if dm is not None and rm is not None:
                union = (dm[d] | rm[r]).sum().item()
                mask_ious.append((dm[d] & rm[r]).sum().item() / union if union else 1.0)
        unmatched_det += int(free.sum())
    total_ref = sum(len(r["boxes"]) for r in refs)

    def stats(values, name):
        return {f"{name}_mean": sum(values) / len(values) if values else None, f"{name}_min": min(values, default=None)}

    return {"matched": len(box_ious), "unmatched_ref": total_ref - len(box_ious), "unmatched_det": unmatched_det,
            **stats(box_ious, "box_iou"), **stats(mask_ious, "mask_iou")}
