"""What bf16 + channels_last buys Mask R-CNN's ResNet-50-FPN backbone, beside FCN-ResNet50's ResNet-50 (issue 27).

    python benchmarks/backbone_bf16.py [--rounds 5]

Each row times one module in fp32 (NCHW) and in bf16 autocast + channels_last, alternating in one process
(median of --rounds after a warm-up call), with the same random weights: the ratio is fp32 / bf16. The
rows separate what could make the backbone gain less than FCN-ResNet50's trunk: the input size (FCN's
360 x 480 against Mask R-CNN's padded 800 x 1216), the frozen BatchNorms (kept, or folded into the
convolutions as infer.fold_bn does), and the FPN on top of the ResNet body (lateral 1 x 1 convolutions,
nearest upsampling and additions, 3 x 3 output convolutions).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_features, machine_summary, replace_section, save_record  # noqa: E402

import pixelwise  # noqa: E402
from pixelwise.engine.precision import autocast, channels_last, fold_batchnorm  # noqa: E402

TITLE = "Mask R-CNN backbone: bf16 + channels_last beside FCN-ResNet50's ResNet-50"


def modules() -> dict:
    """name -> (module, input shape)."""
    torch.manual_seed(0)
    mrcnn = pixelwise.create_model("mask_rcnn_r50_fpn", num_classes=90).eval()
    fcn = pixelwise.create_model("fcn_resnet50", num_classes=21).eval()
    body = mrcnn.backbone.body if hasattr(mrcnn.backbone, "body") else None
    rows = {"FCN-ResNet50 (whole, BatchNorm), 360 x 480": (fcn, (1, 3, 360, 480)),
            "FCN-ResNet50 (whole, BatchNorm), 800 x 1216": (fcn, (1, 3, 800, 1216)),
            "Mask R-CNN backbone (ResNet-50 + FPN, frozen BN), 800 x 1216": (mrcnn.backbone, (1, 3, 800, 1216))}
    folded, n = fold_batchnorm(copy.deepcopy(mrcnn.backbone), (torch.randn(1, 3, 224, 224),))
    rows[f"Mask R-CNN backbone, {n} frozen BNs folded, 800 x 1216"] = (folded, (1, 3, 800, 1216))
    if body is not None:
        rows["Mask R-CNN ResNet-50 body alone (frozen BN), 800 x 1216"] = (body, (1, 3, 800, 1216))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    results = []
    for name, (module, shape) in modules().items():
        x = torch.randn(shape)
        fast = copy.deepcopy(module).to(memory_format=torch.channels_last)

        def fp32():
            return module(x)

        def bf16():
            with autocast(cpu, "bf16", "infer.precision"):
                return fast(channels_last(x))

        times = {"fp32": [], "bf16": []}
        with torch.no_grad():
            fp32(), bf16()
            for _ in range(args.rounds):
                for k, fn in (("fp32", fp32), ("bf16", bf16)):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        row = {"module": name, "fp32_s": statistics.median(times["fp32"]), "bf16_s": statistics.median(times["bf16"])}
        row["ratio"] = row["fp32_s"] / row["bf16_s"]
        results.append(row)
        print(f"{name}: fp32 {row['fp32_s']:.3f} s, bf16 + channels_last {row['bf16_s']:.3f} s, {row['ratio']:.2f}x",
              flush=True)
    save_record("backbone_bf16", {"machine": machine_summary(), "cpu": cpu_features(), "rows": results})
    lines = ["| module, input | fp32 s | bf16 + channels_last s | fp32 / bf16 |", "|---|---|---|---|"]
    lines += [f"| {r['module']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | {r['ratio']:.2f}x |" for r in results]
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", TITLE,
                        f"Command: `python benchmarks/backbone_bf16.py --rounds {args.rounds}` ({time.strftime('%Y-%m-%d')}, "
                        f"{machine_summary()}). Median of {args.rounds} alternating calls after a warm-up, random "
                        "weights, batch of 1.\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
