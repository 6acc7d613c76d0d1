"""COCO box and mask AP (Lin et al. 2014) through faster-coco-eval (default) or pycocotools.

Scores are fractions in [0, 1], as the COCO tools compute them (they print 0.xxx, papers print x 100).
A score whose area range has no ground truth at all (for example APs on a set without small objects)
is -1.0, COCO's convention for "undefined".
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["coco_evaluate", "detections_to_results", "masks_to_rle", "rle_to_masks", "stat_names", "BACKENDS"]

BACKENDS = ("faster_coco_eval", "pycocotools")
IOU_TYPES = ("bbox", "segm")


def masks_to_rle(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """(N, H, W) bool / uint8 masks (nonzero = inside) -> N compressed RLEs {"size": [H, W], "counts": str}.

    counts is decoded to str so that the RLEs can be written to JSON.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks_to_rle: masks of shape {tuple(masks.shape)}; expected (N, H, W)")
    inside = torch.as_tensor(masks).detach().cpu()
    inside = inside if inside.dtype == torch.bool else inside != 0
    n, h, w = inside.shape
    # COCO's runs go down the columns. Only the columns a mask touches are read (an object is a small part of the
    # image): their runs, the zeros of the columns before and after added to the first and last run of zeros.
    # (Encoding every column with pycocotools took 80 ms for 150 masks of 512 x 512, mostly transposing them.)
    touched = inside.view(torch.uint8).amax(dim=1)  # any(dim=1), 20x faster on bool
    rles = []
    for k in range(n):
        used = torch.nonzero(touched[k]).flatten().tolist()
        x0, x1 = (used[0], used[-1] + 1) if used else (0, 0)
        counts = _runs(inside[k, :, x0:x1].t().contiguous().numpy().ravel(), before=h * x0, after=h * (w - x1))
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        rles.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
    return rles


def _runs(pixels: np.ndarray, before: int, after: int) -> list[int]:
    """COCO's uncompressed counts (runs of 0s and 1s, the first of 0s) of `pixels` (bool, column-major) with
    `before` 0s in front and `after` 0s behind."""
    if pixels.size == 0:
        return [before + after]
    change = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    counts = ([0] if pixels[0] else []) + np.diff(np.concatenate(([0], change, [pixels.size]))).tolist()
    counts[0] += before
    if pixels[-1]:
        return counts + [after] if after else counts
    counts[-1] += after
    return counts


def rle_to_masks(rles: Sequence[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """N RLEs (compressed or uncompressed) -> (N, H, W) bool; `size` (H, W) gives the shape when N = 0."""
    if not rles:
        if size is None:
            raise ValueError("rle_to_masks: no RLEs and no size; pass size=(H, W) to get an empty (0, H, W) array")
        return np.zeros((0, *size), dtype=bool)
    h, w = rles[0]["size"]
    compressed = [mask_utils.frPyObjects(r, h, w) if isinstance(r["counts"], list) else r for r in rles]
    return mask_utils.decode(compressed).transpose(2, 0, 1).astype(bool)


def _array(x: Any, name: str, image_id: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if x is None:
        raise ValueError(f"coco_evaluate: detections for image_id={image_id} have no {name!r}")
    return np.asarray(x)


def detections_to_results(
    gt: Mapping, detections: Sequence[Mapping], category_ids: Mapping[int, int] | None = None,
    *, iou_types: Sequence[str] = IOU_TYPES,
) -> dict[str, list[dict]]:
    """Per-image detections -> COCO result lists, one per IoU type ({"bbox": [...], "segm": [...]}).

    detections: one dict per image: image_id, boxes (N, 4) xyxy in pixels, scores (N,), labels (N,)
    contiguous (mapped by category_ids; None = already COCO category ids), and for "segm" masks: (N, H, W)
    or (N, 1, H, W) bool / uint8, or float probabilities binarised at 0.5 (Mask R-CNN's threshold), or a
    list of N RLEs. As in detectron2, bbox results carry no mask and segm results no box, so that mask AP
    sorts instances into small / medium / large by mask area, not box area.
    """
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    known = {c["id"] for c in gt["categories"]}
    results: dict[str, list[dict]] = {t: [] for t in iou_types}
    for det in detections:
        image_id = det.get("image_id")
        if image_id not in sizes:
            raise ValueError(f"coco_evaluate: detections for image_id={image_id!r}, which is not in the ground truth")
        boxes = _array(det.get("boxes"), "boxes", image_id).astype(np.float64).reshape(-1, 4)
        scores = _array(det.get("scores"), "scores", image_id).astype(np.float64).reshape(-1)
        labels = _array(det.get("labels"), "labels", image_id).astype(np.int64).reshape(-1)
        n = len(boxes)
        if len(scores) != n or len(labels) != n:
            raise ValueError(
                f"coco_evaluate: image_id={image_id} has {n} boxes, {len(scores)} scores and {len(labels)} labels;"
                " expected the same number"
            )
        if category_ids is None:
            cats = labels.tolist()
        else:
            bad = sorted({int(k) for k in labels if int(k) not in category_ids})
            if bad:
                raise ValueError(
                    f"coco_evaluate: image_id={image_id} has labels {bad} that category_ids does not map;"
                    f" expected labels among {sorted(category_ids)}"
                )
            cats = [category_ids[int(k)] for k in labels]
        unknown = sorted(set(cats) - known)
        if unknown:
            raise ValueError(f"coco_evaluate: image_id={image_id} has category ids {unknown} not in the ground truth")
        if "bbox" in results:
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            results["bbox"].extend(
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s, "area": b[2] * b[3]}
                for c, b, s in zip(cats, xywh.tolist(), scores.tolist())
            )
        if "segm" in results:
            rles = _rles(det.get("masks"), n, image_id, sizes[image_id])
            # pycocotools' area() sizes a uint8 array by the number of RLEs: under numpy 2 it fails beyond 255.
            areas = [a for i in range(0, len(rles), 255) for a in mask_utils.area(rles[i:i + 255]).tolist()]
            results["segm"].extend(
                {"image_id": image_id, "category_id": c, "segmentation": r, "score": s, "area": a}
                for c, r, s, a in zip(cats, rles, scores.tolist(), areas)
            )
    return results


def _rles(masks: Any, n: int, image_id: Any, size: tuple[int, int]) -> list[dict]:
    if masks is None:
        raise ValueError(f"coco_evaluate: iou_types has 'segm' but detections for image_id={image_id} have no masks")
    if isinstance(masks, (list, tuple)) and (not masks or isinstance(masks[0], dict)):
        rles = [mask_utils.frPyObjects(r, *r["size"]) if isinstance(r["counts"], list) else r for r in masks]
        shapes = {tuple(r["size"]) for r in rles}
    else:
        masks = _array(masks, "masks", image_id)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3:
            raise ValueError(
                f"coco_evaluate: masks of image_id={image_id} have shape {masks.shape};"
                " expected (N, H, W) or (N, 1, H, W)"
            )
        if masks.dtype.kind == "f":
            masks = masks >= 0.5
        rles = masks_to_rle(masks)
        shapes = {tuple(masks.shape[1:])}
    if len(rles) != n:
        raise ValueError(f"coco_evaluate: image_id={image_id} has {len(rles)} masks for {n} boxes")
    if rles and shapes != {size}:
        raise ValueError(
            f"coco_evaluate: masks of image_id={image_id} are {sorted(shapes)} (H, W) but the image is {size};"
            " paste masks into the full image before evaluating"
        )
    return rles


def _results_dataset(gt: Mapping, results: list[dict], iou_type: str) -> dict:
    """What COCO.loadRes would build, made directly so that empty results work in both backends."""
    anns = []
    for k, r in enumerate(results, start=1):
        ann = dict(r, id=k, iscrowd=0)
        if iou_type == "segm":
            ann["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
        anns.append(ann)
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}


def _evaluate(backend: str, gt: dict, dt: dict, iou_type: str, max_dets: int) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):  # both tools print progress
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt, coco_dt = COCO(copy.deepcopy(gt)), COCO(dt)
            evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=lambda *a, **k: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = copy.deepcopy(gt), dt
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    return _summarize(evaluator)


def _summarize(evaluator: Any) -> np.ndarray:
    """COCOeval.summarize()'s 12 numbers from its accumulated precision / recall, without printing.

    pycocotools' own summarize() asks for AP at 100 detections whatever params.maxDets says (-1 otherwise).
    """
    p = evaluator.params
    precision = evaluator.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M max dets)
    recall = evaluator.eval["recall"]  # (T, K, A, M)
    area = {name: i for i, name in enumerate(p.areaRngLbl)}
    t50, t75 = (int(np.argmin(np.abs(np.asarray(p.iouThrs) - t))) for t in (0.5, 0.75))

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]  # -1: no ground truth for that class / area
        return float(np.mean(x)) if x.size else -1.0

    ap = [precision[..., area["all"], 2], precision[t50, ..., area["all"], 2], precision[t75, ..., area["all"], 2]]
    ap += [precision[..., area[a], 2] for a in ("small", "medium", "large")]
    ar = [recall[..., area["all"], m] for m in range(3)]
    ar += [recall[..., area[a], 2] for a in ("small", "medium", "large")]
    return np.array([mean(x) for x in ap + ar])


def stat_names(max_dets: int = 100) -> tuple[str, ...]:
    """Names of COCOeval.summarize()'s 12 numbers; AR{max_dets} is recall at max_dets detections per image."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs", "ARm", "ARl")


def coco_evaluate(
    gt: Mapping | str | Path,
    detections: Sequence[Mapping],
    category_ids: Mapping[int, int] | None = None,
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "faster_coco_eval",
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO AP / AR of `detections` against the ground truth `gt` (a COCO instances dict or JSON path).

    detections: one dict per image, see `detections_to_results`; images without detections may be
    left out or given N = 0. category_ids: contiguous label -> COCO category id (a dataset's
    `category_ids`), or None when the labels already are COCO ids. max_dets: detections kept per image
    (COCO's 100, the highest scoring; raise it for images with more objects, such as ISBI's ~100-300 cells).

    Returns plain floats keyed "{iou_type}_{stat}" for stat in stat_names(max_dets) ("bbox_AP",
    "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl", "bbox_AR1", "bbox_AR10", "bbox_AR100",
    "bbox_ARs", "bbox_ARm", "bbox_ARl", "segm_AP", ...): fractions in [0, 1], or -1.0 where the area
    range has no ground truth. No detections give 0.0, not an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"coco_evaluate: backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"coco_evaluate: iou_types={tuple(iou_types)}; expected a non-empty subset of {IOU_TYPES}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets <= 10:
        raise ValueError(f"coco_evaluate: max_dets={max_dets!r}; expected an integer > 10 (COCO uses 100)")
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"coco_evaluate: ground-truth file {str(path)!r} does not exist")
        with open(path) as f:
            gt = json.load(f)
    missing = [k for k in ("images", "annotations", "categories") if k not in gt]
    if missing:
        raise ValueError(f"coco_evaluate: the ground truth has no {missing}; expected a COCO instances dict")
    results = detections_to_results(gt, detections, category_ids, iou_types=iou_types)
    scores: dict[str, float] = {}
    for iou_type in iou_types:
        stats = _evaluate(backend, gt, _results_dataset(gt, results[iou_type], iou_type), iou_type, max_dets)
        scores.update({f"{iou_type}_{name}": float(v) for name, v in zip(stat_names(max_dets), stats)})
    return scores
