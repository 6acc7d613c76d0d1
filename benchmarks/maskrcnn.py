"""Mask R-CNN: ours against torchvision's, and against U-Net + connected components on ISBI 2012 cells.

1. step: time per training step of our R18-FPN and torchvision's (MaskRCNN on resnet_fpn_backbone
   'resnet18', frozen BN, all 5 stages trainable, min/max size 512) with identical weights and seeds on
   the same 2 ISBI slices (0 and 1, 130-136 cells each), SGD, alternating, in this process. The issue's
   bar: not slower than torchvision.
2. inference: our mask_rcnn_r50_fpn loaded from a randomly initialised torchvision maskrcnn_resnet50_fpn,
   built as for its COCO weights (frozen BN), against that model; score threshold 0, so 100 detections per
   image; tiny-coco images at the default 800/1333 size, alternating; the ratio of times, and how far the
   outputs agree.
3. isbi: configs/mask_rcnn_r18_fpn_isbi_cpu.yaml trained from scratch for --budget seconds on slices 0-24,
   against the U-Net of configs/unet_isbi2012_cpu.yaml trained for the same budget, whose cell
   probability map (class 0 = cell interior) is cut into 4-connected regions at 0.5, each an instance scored
   by its mean cell probability. COCO mask AP of both on slices 25-29, the same ground truth (data.ISBIInstances)
   and the same 300 detections per image at most.
4. recipe: the CPU recipe's optimiser and normalisation, each variant trained for --recipe-budget seconds
   as in part 3 (ablation behind configs/mask_rcnn_r18_fpn_isbi_cpu.yaml).

    python benchmarks/maskrcnn.py              # PIXELWISE_DATA or --data-root: the datasets
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_summary, replace_section, save_record, train_and_evaluate  # noqa: E402
import pixelwise  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.data import ISBIInstances, dataset_dir, to_coco  # noqa: E402
from pixelwise.engine.run import build_run  # noqa: E402
from pixelwise.engine.tasks.instance import collate_instances  # noqa: E402
from pixelwise.metrics.coco import coco_evaluate, masks_to_rle  # noqa: E402
from pixelwise.models.mask_rcnn import convert_torchvision_maskrcnn  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "maskrcnn.json"
MAX_DETS = 300
AP_KEYS = ("segm_AP", "segm_AP50", "segm_AP75", "bbox_AP", "bbox_AP50")


def _isbi_root(data_root: str | None) -> Path:
    return dataset_dir(load_config(ROOT / "configs" / "mask_rcnn_r18_fpn_isbi_cpu.yaml", [f"data.root={data_root}"]
                                   if data_root else []).data)


def step_time(args) -> dict:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    ds = ISBIInstances(_isbi_root(args.data_root), indices=[0, 1], channels=3)
    images, targets = collate_instances([ds[0], ds[1]])
    torch.manual_seed(0)
    tv = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), num_classes=2,
                  min_size=512, max_size=512)
    # Identical weights and sampling seeds: both models see the same proposals and RoIs at every step,
    # so their times compare the implementations, not how much work two different models happen to draw.
    ours = pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=1, min_size=512, max_size=512)
    ours.load_state_dict(convert_torchvision_maskrcnn(tv.state_dict()))

    def run(model, is_ours: bool, opt, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        losses = model(images, targets, detect=False)["losses"] if is_ours else model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, float(loss)

    models = {"ours": (ours, True), "torchvision": (tv, False)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, (m, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}
    for m, _ in models.values():
        m.train()
    for i in range(args.steps + 1):  # the first step of each warms up and is not timed
        for k, (m, is_ours) in models.items():
            t, loss = run(m, is_ours, opts[k], seed=i)
            losses[k].append(loss)
            if i:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["torchvision"]))
    return {"instances": [len(t["boxes"]) for t in targets], "steps": args.steps,
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "median_seconds": {k: round(v, 2) for k, v in med.items()}, "ratio": round(med["ours"] / med["torchvision"], 3),
            "loss_max_abs_diff": diff, "box_iou": box_iou_time(targets[0]["boxes"])}


def box_iou_time(gt: torch.Tensor) -> dict:
    """Median seconds of ours and torchvision's box_iou of one slice's cells against the anchors of a 512x512
    FPN image (P2-P6: one size per level, 3 ratios), the matrix the RPN matches on at every step."""
    from torchvision.ops import box_iou as tv_box_iou

    from pixelwise.ops.anchors import FPN_RATIOS, FPN_SIZES, grid_anchors
    from pixelwise.ops.boxes import box_iou

    strides = (4, 8, 16, 32, 64)
    anchors = torch.cat(grid_anchors(FPN_SIZES, FPN_RATIOS, [(512 // s, 512 // s) for s in strides], strides))
    assert torch.equal(box_iou(gt, anchors), tv_box_iou(gt, anchors))
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for _ in range(10):
        for k, fn in (("ours", box_iou), ("torchvision", tv_box_iou)):
            t0 = time.perf_counter()
            fn(gt, anchors)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shape": [len(gt), len(anchors)], "median_seconds": {k: round(v, 4) for k, v in med.items()},
            "ratio": round(med["ours"] / med["torchvision"], 3)}


def inference(args) -> dict:
    from torchvision.io import read_image
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    root = dataset_dir(load_config(None, ["data.dataset=coco", "data.path=tiny-coco"]
                                   + ([f"data.root={args.data_root}"] if args.data_root else [])).data)
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))[: args.images]
    images = [read_image(str(root / "images" / n)).float() / 255 for n in names]
    torch.manual_seed(0)
    # maskrcnn_resnet50_fpn(weights="DEFAULT") as built for COCO weights (FrozenBatchNorm2d, 3 trainable stages),
    # randomly initialised: with weights=None torchvision would build plain BatchNorm2d instead.
    tv = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91).eval()
    tv.roi_heads.score_thresh = 0.0
    ours = pixelwise.create_model("mask_rcnn_r50_fpn", num_classes=90, box_score_thresh=0.0).eval()
    ours.load_state_dict(convert_torchvision_maskrcnn(tv.state_dict()))
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    box_diff, ious, same_labels, counts = 0.0, [], True, []
    with torch.no_grad():
        for r in range(args.rounds + 1):
            for img in images:
                t0 = time.perf_counter()
                d = ours([img])["detections"][0]
                t1 = time.perf_counter()
                e = tv([img])[0]
                t2 = time.perf_counter()
                if r:  # round 0 warms up
                    times["ours"].append(t1 - t0)
                    times["torchvision"].append(t2 - t1)
                    continue
                counts.append(len(e["boxes"]))
                same_labels &= len(d["labels"]) == len(e["labels"]) and torch.equal(d["labels"], e["labels"])
                if len(d["boxes"]) == len(e["boxes"]):
                    box_diff = max(box_diff, float((d["boxes"] - e["boxes"]).abs().max()))
                a, b = d["masks"], e["masks"][:, 0] >= 0.5
                inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
                ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": names, "detections": counts, "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "ratio": round(med["ours"] / med["torchvision"], 3), "box_max_abs_diff": box_diff,
            "labels_identical": bool(same_labels), "mask_iou_min": round(min(ious), 4),
            "mask_iou_mean": round(float(np.mean(ious)), 5), "masks_compared": len(ious)}


def unet_instances(model, cfg, data_root: str | None) -> list[dict]:
    """Slices 25-29 as U-Net cell regions: 4-connected components of p(cell) >= 0.5, scored by mean p(cell)."""
    from pixelwise.engine.distributed import resolve_device

    run = build_run(cfg, model=model, splits=("val",))
    ds = run.val_ds
    device = resolve_device(cfg.train.device)
    predictor = run.task.predictor(model.to(device).eval(), device)
    detections = []
    for i in range(len(ds)):
        image, _ = ds[i]
        cell = predictor.predict_probs(image)[0].numpy()  # class 0 = cell interior, 1 = membrane
        regions, n = ndimage.label(cell >= 0.5)
        ids = np.arange(1, n + 1)
        scores = ndimage.mean(cell, regions, ids) if n else np.zeros(0)
        keep = ids[np.argsort(-scores, kind="stable")][:MAX_DETS]
        masks = regions[None] == keep[:, None, None]
        boxes = [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in ndimage.find_objects(regions)]
        detections.append({"image_id": ds.indices[i], "boxes": np.array([boxes[k - 1] for k in keep]).reshape(-1, 4),
                           "scores": scores[keep - 1], "labels": np.ones(len(keep), dtype=np.int64),
                           "masks": masks_to_rle(masks) if len(keep) else []})
    return detections


def isbi(args) -> dict:
    common = [f"train.time_limit={args.budget}"] + ([f"data.root={args.data_root}"] if args.data_root else [])
    out = {"budget_seconds": args.budget}
    cfg = load_config(ROOT / "configs" / "mask_rcnn_r18_fpn_isbi_cpu.yaml",
                      common + [f"output_dir={args.out}/mask_rcnn"] + args.override)
    state, model, metrics, seconds = train_and_evaluate(cfg)
    out["mask_rcnn_r18_fpn"] = {"steps": state.step, "infer_seconds_per_image": round(seconds, 2),
                                **{k: metrics[k] for k in AP_KEYS}}
    cfg = load_config(ROOT / "configs" / "unet_isbi2012_cpu.yaml", common + [f"output_dir={args.out}/unet"])
    state, model, _, _ = train_and_evaluate(cfg)
    t0 = time.monotonic()
    detections = unet_instances(model, cfg, args.data_root)
    seconds = (time.monotonic() - t0) / len(detections)
    gt = to_coco(ISBIInstances(_isbi_root(args.data_root), indices="25-29", channels=3))
    metrics = coco_evaluate(gt, detections, ISBIInstances.category_ids, max_dets=MAX_DETS)
    out["unet + connected components"] = {"steps": state.step, "infer_seconds_per_image": round(seconds, 2),
                                          **{k: metrics[k] for k in AP_KEYS}}
    return out


def _variant(optimizer: str, lr: float, norm: str, rois: int = 128, warmup: int = 20) -> list[str]:
    """Overrides of configs/mask_rcnn_r18_fpn_isbi_cpu.yaml for one recipe variant; every key the variants
    differ in is set, so that they do not change when the recipe does. BatchNorm is trained (from scratch
    there are no statistics to freeze); GroupNorm ignores frozen_bn."""
    return [f"train.optimizer={optimizer}", f"train.lr={lr}", f"train.warmup_steps={warmup}", f"model.args.norm={norm}",
            "model.args.frozen_bn=false", f"model.args.box_batch_size_per_image={rois}"]


RECIPE_VARIANTS = (  # (name, overrides)
    ("SGD 0.01, GroupNorm, warmup 50", _variant("sgd", 0.01, "gn", warmup=50)),
    ("SGD 0.02, GroupNorm, warmup 20", _variant("sgd", 0.02, "gn")),
    ("Adam 1e-3, GroupNorm, warmup 20", _variant("adam", 1e-3, "gn")),
    ("Adam 1e-3, BatchNorm (trained), warmup 20", _variant("adam", 1e-3, "bn")),
    ("Adam 1e-3, BatchNorm (trained), warmup 20, 512 RoIs per image", _variant("adam", 1e-3, "bn", rois=512)),
    ("Adam 2e-3, BatchNorm (trained), warmup 20", _variant("adam", 2e-3, "bn")),
)


def recipe(args, previous: dict) -> dict:
    """Trains the variants numbered in --variants (all by default); the others keep their results from
    `previous` (the recorded recipe part) when those were measured with the same budget."""
    out = {"budget_seconds": args.recipe_budget}
    if args.variants and previous.get("budget_seconds") == args.recipe_budget:
        out.update({k: v for k, v in previous.items() if k in {n for n, _ in RECIPE_VARIANTS}})
    chosen = [int(i) for i in args.variants.split(",")] if args.variants else range(len(RECIPE_VARIANTS))
    for i in chosen:
        name, overrides = RECIPE_VARIANTS[i]
        cfg = load_config(ROOT / "configs" / "mask_rcnn_r18_fpn_isbi_cpu.yaml",
                          [f"train.time_limit={args.recipe_budget}", f"output_dir={args.out}/recipe{i}", *overrides]
                          + ([f"data.root={args.data_root}"] if args.data_root else []))
        state, _, metrics, _ = train_and_evaluate(cfg)
        out[name] = {"steps": state.step, **{k: metrics[k] for k in AP_KEYS}}
        print(name, out[name], flush=True)
    return {k: out[k] for k in ["budget_seconds", *(n for n, _ in RECIPE_VARIANTS)] if k in out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="step,inference,isbi", help="comma-separated: step, inference, isbi, recipe")
    ap.add_argument("--budget", type=float, default=900, help="isbi: training seconds per model (default 900)")
    ap.add_argument("--recipe-budget", type=float, default=450, help="recipe: training seconds per variant")
    ap.add_argument("--variants", default="", help="recipe: comma-separated variant numbers (0-based) to rerun")
    ap.add_argument("--steps", type=int, default=5, help="step: timed training steps per model")
    ap.add_argument("--images", type=int, default=4, help="inference: tiny-coco images")
    ap.add_argument("--rounds", type=int, default=2, help="inference: timed passes over the images")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_maskrcnn"))
    ap.add_argument("-o", "--override", action="append", default=[], help="isbi: overrides of the Mask R-CNN recipe")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and results/ alone")
    args = ap.parse_args()
    parts = args.parts.split(",")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d"), "parts": parts}
    for name, fn in (("step", step_time), ("inference", inference), ("isbi", isbi),
                     ("recipe", lambda a: recipe(a, previous.get("recipe", {})))):
        if name in parts:
            record[name] = fn(args)
            print(name, record[name], flush=True)
    if args.no_write:
        return
    record = {**{k: v for k, v in previous.items() if k not in parts}, **record}  # keep the parts not rerun
    save_record("maskrcnn", record)
    write_section(record)


def write_section(record: dict) -> None:
    body = f"Script: `benchmarks/maskrcnn.py` ({record['date']}, {record['machine']}).\n"
    if "step" in record:
        s = record["step"]
        body += (
            f"\n**Training step, R18-FPN from scratch** (`--parts step`): 2 ISBI slices of 512x512 with "
            f"{' and '.join(map(str, s['instances']))} cells, frozen BN, all stages trainable, SGD; ours loaded "
            f"with torchvision's random weights and both seeded alike at each step, so they sample the same RoIs "
            f"(largest difference of the summed losses over the steps: {s['loss_max_abs_diff']:.1e}); median of "
            f"{s['steps']} steps after one warm-up step each, alternating in one process.\n\n"
            f"| model | s / step | steps (s) |\n|---|---|---|\n"
            + "".join(f"| {k} | {s['median_seconds'][k]} | {', '.join(map(str, s['seconds'][k]))} |\n" for k in s["seconds"])
            + f"\nTime ratio ours / torchvision: {s['ratio']:.3f}.\n"
        )
        b = s["box_iou"]
        body += (
            f"\nThe RPN's IoU matrix of a slice's cells against the anchors ({b['shape'][0]} x {b['shape'][1]}): "
            f"`pixelwise.ops.box_iou` {b['median_seconds']['ours'] * 1e3:.0f} ms, torchvision's "
            f"{b['median_seconds']['torchvision'] * 1e3:.0f} ms (ratio {b['ratio']:.3f}; equal values).\n"
        )
    if "inference" in record:
        r = record["inference"]
        body += (
            f"\n**Inference, R50-FPN with identical weights** (`--parts inference`): torchvision's "
            f"maskrcnn_resnet50_fpn built as for its COCO weights (FrozenBatchNorm2d), randomly initialised, and ours "
            f"converted from it; {len(r['images'])} tiny-coco images at 800/1333, score threshold 0 "
            f"({', '.join(map(str, r['detections']))} detections), median seconds per image.\n\n| model | s / image |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in r["median_seconds"].items())
            + f"\nTime ratio ours / torchvision: {r['ratio']:.3f}. Agreement: boxes max abs diff {r['box_max_abs_diff']:.2e}, "
              f"labels identical: {r['labels_identical']}, mask IoU (binarised at 0.5) min {r['mask_iou_min']} and mean "
              f"{r['mask_iou_mean']} over {r['masks_compared']} masks.\n"
        )
    if "isbi" in record:
        models = {k: v for k, v in record["isbi"].items() if k != "budget_seconds"}
        rows = "".join(f"| {k} | {v['steps']} | {v['segm_AP']:.4f} | {v['segm_AP50']:.4f} | {v['segm_AP75']:.4f} | "
                       f"{v['bbox_AP']:.4f} | {v['infer_seconds_per_image']} |\n" for k, v in models.items())
        body += (
            f"\n**ISBI 2012 cells as instances** (`--parts isbi --budget {record['isbi']['budget_seconds']:g}`): each "
            f"trained from scratch on slices 0-24 for {record['isbi']['budget_seconds']:g} s, COCO AP on slices 25-29 (one class, at most 300 detections per slice). Mask R-CNN: "
            "configs/mask_rcnn_r18_fpn_isbi_cpu.yaml; U-Net: configs/unet_isbi2012_cpu.yaml, its cell probability "
            "cut into connected regions at 0.5, each scored by its mean probability.\n\n"
            "| model | steps | mask AP | mask AP50 | mask AP75 | box AP | s / slice |\n|---|---|---|---|---|---|---|\n" + rows
        )
    if "recipe" in record:
        r = record["recipe"]
        rows = "".join(f"| {k} | {v['steps']} | {v['segm_AP']:.4f} | {v['segm_AP50']:.4f} | {v['bbox_AP']:.4f} |\n"
                       for k, v in r.items() if k != "budget_seconds")
        body += (
            f"\n**CPU recipe ablation** (`--parts recipe --recipe-budget {r['budget_seconds']:g}`): "
            f"configs/mask_rcnn_r18_fpn_isbi_cpu.yaml with each variant, {r['budget_seconds']:g} s of training from "
            "scratch on slices 0-24, COCO AP on slices 25-29.\n\n"
            "| variant | steps | mask AP | mask AP50 | box AP |\n|---|---|---|---|---|\n" + rows
        )
    replace_section(ROOT / "BENCHMARKS.md", "Mask R-CNN", body)


if __name__ == "__main__":
    main()
