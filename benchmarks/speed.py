"""Inference speed of every fast path beside the peer, alternating in one process (issue 12).

    python benchmarks/speed.py [--rounds 3] [--models fcn_resnet50,mask_rcnn_r50_fpn,...] [--json FILE]

For each model, with the same random weights and the same input: the peer fp32 eager (torchvision
with our weights converted to it, or segmentation_models_pytorch where torchvision has no such
model), ours fp32 eager, ours bf16 autocast + channels_last (also with BatchNorm folded, and compiled by
torch.compile with frozen weights: infer.compile), the exported model in ONNX Runtime
(fp32) and OpenVINO (fp32 and bf16), and OpenVINO int8 quantized by nncf (calibrated on 4 random
inputs, or for Mask R-CNN on its 2 images: a speed figure; int8 scores on trained checkpoints are
benchmarks/deployed.py's). The variants run one after the other, --rounds times (after
one warm-up call each); the table gives the median time per call, the ratio of the peer's time to
each (higher is faster) and the agreement with ours fp32 (largest probability difference and share
of pixels with the same label; for Mask R-CNN, detections matched by label and box IoU >= 0.5 in score
order, pixelwise.metrics.agreement, with the box and mask IoU of each pair and the unmatched ones).
Random weights: the agreement numbers of a trained model are in the "fast path on trained models"
table. Every record names the CPU and whether it has AMX, avx512_bf16 and VNNI (benchmarks.common):
bf16 gains depend on them, so figures from two kinds of CPU are not to be mixed.
"""
from __future__ import annotations

import argparse
import json
from unittest import mock
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_features, machine_summary, replace_section, save_record  # noqa: E402

import pixelwise  # noqa: E402
from pixelwise.export import _export_part  # noqa: E402
from pixelwise.deploy.graph import RuntimeModule  # noqa: E402
from pixelwise.engine.tasks.instance import InstanceTask  # noqa: E402
from pixelwise.engine.tasks.semantic import Normalized  # noqa: E402
from pixelwise.engine.precision import autocast, channels_last, compile_frozen, fold_batchnorm  # noqa: E402
from pixelwise.metrics.agreement import match_detections  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def semantic_models() -> dict:
    """name -> (ours, peer or None, peer name, input (1, C, H, W) in [0, 1])."""
    import segmentation_models_pytorch as smp
    import torchvision

    from pixelwise.models.fcn import convert_torchvision_fcn

    def fcn_resnet50():
        peer = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                            aux_loss=False).eval()
        ours = pixelwise.create_model("fcn_resnet50", num_classes=21)
        ours.load_state_dict(convert_torchvision_fcn(peer.state_dict()))
        return ours, _TorchvisionOut(peer), "torchvision fcn_resnet50", (1, 3, 360, 480)

    def unet():
        ours = pixelwise.create_model("unet", num_classes=2, in_channels=1, base_width=16, depth=4, padding=False,
                                      batch_norm=True)
        peer = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2)
        return ours, peer, "smp Unet(resnet18) (another network)", (1, 1, 444, 444)

    def fcn8s():  # the CPU recipe's FCN-8s (a quarter of VGG16's widths); no peer has FCN-8s
        ours = pixelwise.create_model("fcn8s", num_classes=12, pad100=False, width=0.25, fc_channels=512,
                                      batch_norm=True)
        return ours, None, "-", (1, 3, 352, 480)

    def fc_densenet(name):
        def build():
            return pixelwise.create_model(name, num_classes=12), None, "-", (1, 3, 352, 480)
        return build

    return {"unet": unet, "fcn8s": fcn8s, "fcn_resnet50": fcn_resnet50, "fc_densenet56": fc_densenet("fc_densenet56"),
            "fc_densenet103": fc_densenet("fc_densenet103")}


class _TorchvisionOut(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def timed(fn, rounds_times: list, x) -> torch.Tensor:
    t0 = time.perf_counter()
    out = fn(x)
    rounds_times.append(time.perf_counter() - t0)
    return out


def bench_semantic(name: str, build, rounds: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    ours, peer, peer_name, shape = build()
    ours.eval()
    with torch.no_grad():  # zero-initialised score layers (FCN) would make every variant agree trivially
        for p in ours.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.01)
    x01 = torch.rand(shape)
    norm_mean = torch.tensor(MEAN[: shape[1]]).reshape(1, -1, 1, 1)
    norm_std = torch.tensor(STD[: shape[1]]).reshape(1, -1, 1, 1)
    x = (x01 - norm_mean) / norm_std
    print(f"{name}: exporting ...", flush=True)
    onnx_path = tmp / f"{name}.onnx"
    graph = Normalized(ours, MEAN[: shape[1]], STD[: shape[1]]).eval()
    _export_part(graph, (torch.cat([x01, x01]),), (0, 2, 3), "onnx", onnx_path, None)
    denorm = (MEAN[: shape[1]], STD[: shape[1]])
    import copy

    fast = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(copy.deepcopy(ours), (x,))[0].to(memory_format=torch.channels_last)  # infer.fold_bn
    cpu = torch.device("cpu")

    def bf16_cl(inp, model=fast):
        with autocast(cpu, "bf16", "infer.precision"):
            return model(channels_last(inp)).float()

    compiled = compile_frozen(folded)  # infer.compile (with infer.fold_bn)
    int8_path = _int8_openvino(onnx_path, [[torch.rand(shape).numpy()] for _ in range(4)])
    variants = {"ours fp32": ours, "ours bf16 + channels_last": bf16_cl,
                "ours bf16 + channels_last + fold_bn": lambda inp: bf16_cl(inp, folded),
                "ours bf16 + channels_last + fold_bn, torch.compile": lambda inp: bf16_cl(inp, compiled),
                "ONNX Runtime fp32": RuntimeModule(onnx_path, "onnxruntime", denormalize=denorm),
                "OpenVINO fp32": RuntimeModule(onnx_path, "openvino", denormalize=denorm),
                "OpenVINO bf16": RuntimeModule(onnx_path, "openvino", precision="bf16", denormalize=denorm),
                "OpenVINO int8 (nncf) + bf16": RuntimeModule(int8_path, "openvino", precision="bf16",
                                                             denormalize=denorm)}
    if peer is not None:
        variants = {f"peer: {peer_name} fp32": peer.eval(), **variants}
    times = {k: [] for k in variants}
    outs = {}
    with torch.no_grad():
        for k, fn in variants.items():  # warm-up
            outs[k] = F.softmax(fn(x).float(), dim=1)
        for r in range(rounds):
            for k, fn in variants.items():
                timed(fn, times[k], x)
            print(f"{name}: round {r + 1}/{rounds}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in variants),
                  flush=True)
    ref = outs["ours fp32"]
    base = statistics.median(times[next(iter(variants))])
    rows = []
    for k in variants:
        same_model = not k.startswith("peer") or name == "fcn_resnet50"
        p = outs[k][..., : ref.shape[-2], : ref.shape[-1]]
        rows.append({"variant": k, "median_s": statistics.median(times[k]), "times": times[k],
                     "speedup_vs_first": base / statistics.median(times[k]),
                     "max_prob_diff": (p - ref).abs().max().item() if same_model and p.shape == ref.shape else None,
                     "label_agreement": (p.argmax(1) == ref.argmax(1)).float().mean().item()
                     if same_model and p.shape == ref.shape else None})
    return {"model": name, "input": list(shape), "peer": peer_name, "rows": rows}


def bench_mask_rcnn(rounds: int, tmp: Path, data_root: Path | None) -> dict:
    import copy

    import numpy as np
    import torchvision
    from PIL import Image

    from pixelwise.models.mask_rcnn import convert_torchvision_maskrcnn

    torch.manual_seed(0)
    peer = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    ours = pixelwise.create_model("mask_rcnn_r50_fpn", num_classes=90).eval()
    ours.load_state_dict(convert_torchvision_maskrcnn(peer.state_dict()))
    folder = (data_root / "tiny-coco" / "images") if data_root else None
    if folder is not None and folder.is_dir():
        files = sorted(folder.iterdir())[:2]
        images = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255 for f in files]
        what = "2 tiny-coco images"
    else:
        images = [torch.rand(3, 480, 640), torch.rand(3, 427, 640)]
        what = "2 random images"
    print("mask_rcnn_r50_fpn: exporting ...", flush=True)
    task = InstanceTask(None)  # its export parts and how they are put back need no config
    parts = task.export_parts(ours, images[0])
    # Beside them, the RoI parts as exported before RoIAlign went in their graphs (the pooling in PyTorch)
    with mock.patch("pixelwise.engine.tasks.instance._pooled_parts", lambda model: {}):
        outside = {n: p for n, p in task.export_parts(ours, images[0]).items() if n in ("box_head", "mask_head")}

    def runtime_model(runtime, precision="fp32", suffix=".onnx", roi_outside=False):
        def graph(name, **kwargs):
            stem = "mrcnn_outside" if roi_outside and name in outside else "mrcnn"
            return RuntimeModule(tmp / f"{stem}.{name}{suffix}", runtime, precision=precision, **kwargs)

        chosen = {**parts, **outside} if roi_outside else parts
        meta = {n: {"structure": p[2], **getattr(p[0], "export_meta", {})} for n, p in chosen.items()}
        return task.exported_model(copy.deepcopy(ours), meta, graph).eval()

    for name, (module, args, structure, dims) in parts.items():
        _export_part(module, args, dims, "onnx", tmp / f"mrcnn.{name}.onnx", None)
    for name, (module, args, structure, dims) in outside.items():
        _export_part(module, args, dims, "onnx", tmp / f"mrcnn_outside.{name}.onnx", None)
    calibration = task.calibration_inputs(SimpleNamespace(model=ours), parts, images)  # calibrated on the 2 images
    for name in parts:
        _int8_openvino(tmp / f"mrcnn.{name}.onnx", calibration[name])
    fast = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    folded = copy.deepcopy(ours)  # infer.fold_bn: the backbone's frozen BatchNorms folded into its convolutions
    folded.backbone = fold_batchnorm(folded.backbone, (torch.randn(1, 3, 224, 224),))[0]
    folded = folded.to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")

    def run(model, precision="fp32"):
        def call(imgs):
            with autocast(cpu, precision, "infer.precision"):
                return model(imgs)
        return call

    # torchvision returns mask probabilities; binarised with ours' rule, p >= 0.5. (With p > 0.5, as torchvision's
    # reference COCO evaluation does, the random-weight model's masks lose their edges: saturated 28 x 28 masks
    # pasted next to their zero padding are exactly 0.5 there. That was the "97.63% of mask pixels".)
    variants = {"peer: torchvision maskrcnn_resnet50_fpn fp32": lambda imgs: [{**d, "masks": d["masks"] >= 0.5}
                                                                             for d in peer(imgs)],
                "ours fp32": lambda imgs: ours(imgs)["detections"],
                "ours bf16 + channels_last": lambda imgs: run(fast, "bf16")(imgs)["detections"],
                "ours bf16 + channels_last + fold_bn": lambda imgs: run(folded, "bf16")(imgs)["detections"],
                "ONNX Runtime fp32": lambda imgs, m=runtime_model("onnxruntime"): m(imgs)["detections"],
                "OpenVINO fp32": lambda imgs, m=runtime_model("openvino"): m(imgs)["detections"],
                "OpenVINO bf16": lambda imgs, m=runtime_model("openvino", "bf16"): m(imgs)["detections"],
                "OpenVINO bf16, RoIAlign in PyTorch": lambda imgs, m=runtime_model("openvino", "bf16", roi_outside=True):
                    m(imgs)["detections"],
                "OpenVINO int8 (nncf) + bf16": lambda imgs, m=runtime_model("openvino", "bf16", ".int8.xml"):
                    m(imgs)["detections"]}
    times = {k: [] for k in variants}
    agreement = {}
    with torch.no_grad():
        ref = variants["ours fp32"](images)
        for k, fn in variants.items():  # warm-up, compared at once (full-size masks take memory)
            agreement[k] = _detection_agreement(fn(images), ref)
        del ref
        for r in range(rounds):
            for k, fn in variants.items():
                timed(fn, times[k], images)
            print(f"mask_rcnn: round {r + 1}/{rounds}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in variants),
                  flush=True)
    base = statistics.median(times[next(iter(variants))])
    rows = [{"variant": k, "median_s": statistics.median(times[k]), "times": times[k],
             "speedup_vs_first": base / statistics.median(times[k]), **agreement[k]} for k in variants]
    return {"model": "mask_rcnn_r50_fpn", "input": what, "peer": "torchvision", "rows": rows}


def _int8_openvino(onnx_path: Path, feeds: list) -> Path:
    """The ONNX graph quantized by nncf (as `pixelwise export --int8 --format openvino`), calibrated on feeds."""
    import openvino as ov

    from pixelwise.export import quantize_openvino

    model = quantize_openvino(ov.Core().read_model(str(onnx_path)), feeds)
    path = onnx_path.with_suffix(".int8.xml")
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def _detection_agreement(dets: list[dict], ref: list[dict]) -> dict:
    """Detections per image, and the matched agreement with ours fp32 (the same label numbers as torchvision's)."""
    dets = [{**d, "masks": d["masks"].reshape(len(d["masks"]), *d["masks"].shape[-2:])} for d in dets]
    return {"detections": [len(d["boxes"]) for d in dets], **match_detections(dets, ref)}


def table(results: list[dict]) -> str:
    lines = ["| model (input) | variant | median s / call | speed-up over the first row | agreement with ours fp32 |",
             "|---|---|---|---|---|"]
    for res in results:
        for row in res["rows"]:
            if "max_prob_diff" in row:
                agree = ("-" if row["max_prob_diff"] is None else
                         f"max prob diff {row['max_prob_diff']:.1e}, labels {100 * row['label_agreement']:.2f}%")
            else:
                agree = (f"detections {row['detections']}, {row['matched']} matched "
                         f"({row['unmatched_ref']} of ours fp32 and {row['unmatched_det']} of these unmatched)")
                if row["matched"]:
                    agree += (f", box IoU mean {row['box_iou_mean']:.4f} / min {row['box_iou_min']:.3f}, "
                              f"mask IoU mean {row['mask_iou_mean']:.4f} / min {row['mask_iou_min']:.3f}")
            lines.append(f"| {res['model']} ({res['input']}) | {row['variant']} | {row['median_s']:.3f} | "
                         f"{row['speedup_vs_first']:.2f}x | {agree} |")
    return "\n".join(lines)


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="unet,fcn8s,fcn_resnet50,fc_densenet56,fc_densenet103,mask_rcnn_r50_fpn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--table-only", action="store_true", help="rewrite BENCHMARKS.md's section from the record, run nothing")
    p.add_argument("--json", type=Path, help="also write every row (model, variant, median seconds, ratio to the "
                                             "first row, agreement) and the CPU's features to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_root = Path(os.environ["PIXELWISE_DATA"]) if os.environ.get("PIXELWISE_DATA") else None
    builders = semantic_models()
    results = []
    record = ROOT / "benchmarks" / "results" / "speed.json"
    if args.table_only:
        args.models = ""
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.models.split(",")):
            if name == "mask_rcnn_r50_fpn":
                results.append(bench_mask_rcnn(args.rounds, Path(tmp), data_root))
            else:
                results.append(bench_semantic(name, builders[name], args.rounds, Path(tmp)))
            print(table(results[-1:]), flush=True)
            save_record("speed_partial", {"machine": machine_summary(), "results": results})  # kept if a later one dies
    if args.json:
        rows = [{"model": r["model"], "input": r["input"], **{k: v for k, v in row.items() if k != "times"}}
                for r in results for row in r["rows"]]
        args.json.write_text(json.dumps({"machine": machine_summary(), "cpu": cpu_features(), "rows": rows}, indent=2))
    if record.exists():  # a run of some models replaces their rows and keeps the others'
        order = p.get_default("models").split(",")
        kept = {r["model"]: r for r in json.loads(record.read_text())["results"]}
        kept.update({r["model"]: r for r in results})
        results = [kept[m] for m in order if m in kept]
    if not args.table_only:
        save_record("speed", {"machine": machine_summary(), "cpu": cpu_features(), "results": results})
    body = (f"Command: `python benchmarks/speed.py --rounds {args.rounds}` ({time.strftime('%Y-%m-%d')}, "
            f"{machine_summary()}; the rows of models not in a run are kept from the run before)."
            "\n\nSame random weights and inputs for every variant, alternating in one process "
            f"({args.rounds} rounds after a warm-up call each), median time per call. The first row of each model is "
            "the peer where one exists (torchvision with our weights converted, so its outputs are comparable; smp's "
            "U-Net is another network), else ours fp32. ONNX Runtime and OpenVINO run the graph `pixelwise export` "
            "writes (input normalisation inside). Zero-initialised weights (FCN's score layers) are drawn at random so "
            "that the agreement column means something.\n\n" + table(results))

    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", "Fast path and exported models: inference speed", body)


if __name__ == "__main__":
    main()
