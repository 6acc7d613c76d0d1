"""Trained checkpoints through every fast path, export and int8 model: their scores beside fp32 (issue 27).

    PIXELWISE_DATA=../shared/data python benchmarks/deployed.py --work /tmp/deployed [--budgets /tmp/budgets]
        [--calibration 16] [--only VARIANT_PART] [NAME ...]

The checkpoints are the 4 B runs of benchmarks/budgets.py (in --budgets; run it first): FCN-8s and
FC-DenseNet56 on CamVid, U-Net and Mask R-CNN (R18-FPN, 384 px, 64 RoIs) on ISBI 2012. Each is evaluated
on its recipe's validation split as `pixelwise eval` does, in PyTorch fp32 (the reference), PyTorch
bf16 + channels_last, OpenVINO bf16 (`pixelwise export --format openvino`), and int8 from
`pixelwise export --int8` (OpenVINO through nncf, ONNX Runtime's quantize_static). Mask R-CNN also
with sliced inference (infer.tile / infer.overlap) against whole images, each window resized to the model's
input size (SAHI) and at the whole image's scale (infer.tile_scale=image). For each: the score,
its difference to fp32, evaluation seconds per image (data loading included, the same for all) and the
agreement with fp32 on the validation images (semantic: the share of pixels with fp32's label; Mask
R-CNN: detections matched by label and box IoU >= 0.5, pixelwise.metrics.agreement). Exports go to
--work (made once, kept). The record is benchmarks/results/deployed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_features, machine_summary, replace_section, save_record  # noqa: E402

TITLE = "Trained checkpoints: fast paths, exports and int8 beside fp32"
# name: (benchmarks/budgets.py baseline, metrics reported (the first is the score))
CHECKPOINTS = {"fcn8s-camvid": ("budget-fcn8s-camvid", ("miou", "pixel_acc")),
               "fc_densenet56-camvid": ("budget-fcdn56-camvid", ("miou", "pixel_acc")),
               "unet-isbi": ("budget-unet-isbi", ("vrand_sweep", "adapted_rand_error")),
               "mask_rcnn-isbi": ("budget-maskrcnn-isbi", ("segm_AP", "bbox_AP"))}
SLICES = ["infer.tile=256", "infer.overlap=128"]  # 3 x 3 windows of a 512 x 512 slice, each resized to 384


def variants(work: Path, ckpt: Path, name: str, calibration: int, instance: bool) -> dict:
    """{variant: (path, runtime, overrides)}; exports are written once into work."""
    from pixelwise.export import ExportMismatch, export

    files = {}
    for key, fmt, int8 in (("openvino", "openvino", False), ("openvino-int8", "openvino", True),
                           ("onnx-int8", "onnx", True)):
        out = work / f"{name}.{key}.{'xml' if fmt == 'openvino' else 'onnx'}"
        if not out.exists():
            print(f"{name}: export {key} ...", flush=True)
            try:
                export(ckpt, fmt, out, int8=int8, calibration=calibration)
            except ExportMismatch as e:  # the export's own check refused it: a row that says so
                files[key] = str(e)
                continue
        files[key] = out
    bf16 = ["infer.precision=bf16", "infer.channels_last=true"]
    runs = {"PyTorch fp32": (ckpt, None, ["infer.precision=fp32", "infer.channels_last=false"]),
            "PyTorch bf16 + channels_last": (ckpt, None, bf16),
            "PyTorch bf16 + channels_last + fold_bn": (ckpt, None, [*bf16, "infer.fold_bn=true"]),
            "OpenVINO bf16": (files["openvino"], "openvino", ["infer.precision=bf16"]),
            "OpenVINO int8 (nncf)": (files["openvino-int8"], "openvino", ["infer.precision=fp32"]),
            "ONNX Runtime int8": (files["onnx-int8"], "onnxruntime", ["infer.precision=fp32"])}
    if instance:
        runs["PyTorch fp32, sliced 256 / 128"] = (ckpt, None, ["infer.precision=fp32", "infer.channels_last=false",
                                                               *SLICES])
        runs["PyTorch bf16 + channels_last, sliced 256 / 128"] = (ckpt, None, ["infer.precision=bf16",
                                                                               "infer.channels_last=true", *SLICES])
        fp32 = ["infer.precision=fp32", "infer.channels_last=false", "infer.tile_scale=image"]
        runs["PyTorch fp32, sliced 256 / 128 at the image's scale"] = (ckpt, None, [*fp32, *SLICES])
        runs["PyTorch fp32, sliced 384 / 256 at the image's scale"] = (ckpt, None, [*fp32, "infer.tile=384",
                                                                                    "infer.overlap=256"])
    return runs


def outputs(inference, ds, n: int) -> list:
    """What the agreement is measured on: labels (semantic) or detections (instance) of the first n images."""
    from pixelwise.engine.tasks.instance import InstancePredictor

    p = inference.predictor
    images = [ds[i][0].as_subclass(torch.Tensor) for i in range(min(n, len(ds)))]
    if isinstance(p, InstancePredictor):
        return p.many(images)
    return [p.predict_probs(im).argmax(0) for im in images]


def agreement(got: list, ref: list) -> dict:
    from pixelwise.metrics.agreement import match_detections

    if isinstance(ref[0], dict):
        return match_detections(got, ref)
    same = sum((a == b).sum().item() for a, b in zip(got, ref))
    return {"label_agreement": same / sum(b.numel() for b in ref)}


def bench(name: str, ckpt: Path, work: Path, calibration: int, only: str | None = None, before: dict | None = None) -> dict:
    """Every variant's row; with `only` (comma-separated), the variants whose name contains one of its parts (and
    fp32, the reference) are run
    again and the other rows are kept from `before` (the record's previous rows of this checkpoint)."""
    from pixelwise.engine.run import build_datasets
    from pixelwise.inference import build_inference

    metrics_of = CHECKPOINTS[name][1]
    instance = metrics_of[0] == "segm_AP"
    rows, ref = [], None
    old = (before or {}).get("rows", [])
    # a kept row's speed-up stays against the fp32 time of its own run (CPU times drift between runs)
    kept = {r["variant"]: {"reference_seconds": old[0].get("reference_seconds", old[0]["seconds_per_image"]), **r}
            for r in old if "seconds_per_image" in r or "refused" in r}
    for variant, (path, runtime, overrides) in variants(work, ckpt, name, calibration, instance).items():
        if only and not any(part in variant for part in only.split(",")) and ref is not None:
            if variant in kept:
                rows.append(kept[variant])
            continue
        if isinstance(path, str):  # refused by the export's check
            rows.append({"variant": variant, "refused": path})
            print(f"{name}: {variant}: {path}", flush=True)
            continue
        inference = build_inference(path, runtime=runtime, overrides=overrides)
        ds = build_datasets(inference.cfg, inference.model, splits=("val",), task=inference.task)["val"]
        t0 = time.perf_counter()
        metrics = inference.task.evaluate(inference.model, ds, inference.device, progress=False)
        seconds = (time.perf_counter() - t0) / len(ds)
        out = outputs(inference, ds, 10)
        ref = ref or (metrics, out)
        row = {"variant": variant, "seconds_per_image": seconds, **{m: metrics[m] for m in metrics_of},
               "difference": metrics[metrics_of[0]] - ref[0][metrics_of[0]], **agreement(out, ref[1])}
        rows.append(row)
        print(f"{name}: {variant}: {metrics_of[0]} {row[metrics_of[0]]:.4f} ({row['difference']:+.4f}), "
              f"{seconds:.3f} s/image", flush=True)
    return {"checkpoint": str(ckpt), "metrics": list(metrics_of), "rows": rows}


def table(results: dict) -> str:
    lines = ["| checkpoint | variant | score | difference to fp32 | s / image (eval) | speed-up | agreement with fp32 |",
             "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        m = res["metrics"][0]
        base = res["rows"][0]["seconds_per_image"]
        for r in res["rows"]:
            if "refused" in r:
                lines.append(f"| {name} | {r['variant']} | not written: {r['refused'].split(': ', 1)[-1]} | | | | |")
                continue
            if "label_agreement" in r:
                agree = f"{100 * r['label_agreement']:.2f}% of the pixels"
            else:
                agree = (f"{r['matched']} matched, {r['unmatched_ref']} / {r['unmatched_det']} unmatched, mask IoU "
                         + ("n/a" if r["mask_iou_mean"] is None else f"{r['mask_iou_mean']:.3f}"))
            mark = "*" if "reference_seconds" in r else ""
            lines.append(f"| {name} | {r['variant']}{mark} | {m} {r[m]:.4f} | {r['difference']:+.4f} | "
                         f"{r['seconds_per_image']:.3f} | {r.get('reference_seconds', base) / r['seconds_per_image']:.2f}x"
                         f" | {agree} |")
    if any("reference_seconds" in r for res in results.values() for r in res["rows"]):
        lines.append("\n\\* Kept from an earlier run of this script (`--only` ran the others again): its speed-up is "
                     "against the fp32 time of that run.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    p.add_argument("--budgets", type=Path, default=Path("/tmp/budgets"), help="benchmarks/budgets.py's --out")
    p.add_argument("--work", type=Path, required=True, help="where the exported files go (kept, reused)")
    p.add_argument("--calibration", type=int, default=16)
    p.add_argument("--only", help="comma-separated: run again only the variants whose name contains one of these "
                                  "(fp32 too, the reference); keep the record's other rows")
    args = p.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    record_path = ROOT / "benchmarks" / "results" / "deployed.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"results": {}}
    for name in args.names:
        ckpt = args.budgets / CHECKPOINTS[name][0] / "4-b" / "seed0" / "best.pt"
        if not ckpt.exists():
            sys.exit(f"{ckpt} is missing: run benchmarks/budgets.py --out {args.budgets} first")
        record["results"][name] = bench(name, ckpt, args.work, args.calibration, args.only,
                                        record["results"].get(name))
        record.update(machine=machine_summary(), cpu=cpu_features(), date=time.strftime("%Y-%m-%d"),
                      calibration=args.calibration)
        save_record("deployed", record)
    body = (f"Command: `python benchmarks/deployed.py --work DIR --budgets DIR` ({record['date']}, {record['machine']}; "
            f"int8 calibrated on {record['calibration']} training images). The checkpoints are benchmarks/budgets.py's "
            "4 B runs. Agreement: on the first 10 validation images.\n\n" + table(record["results"]))
    replace_section(ROOT / "BENCHMARKS.md", TITLE, body)


if __name__ == "__main__":
    main()
