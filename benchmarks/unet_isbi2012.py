"""U-Net (ours) against segmentation_models_pytorch Unet('resnet18') on ISBI 2012, at equal wall-clock time.

Both models train in this one process, one after the other, with the same recipe
(configs/unet_isbi2012_cpu.yaml: data, crops, augmentation, weight map, optimizer, batch), the same
time budget, and are evaluated the same way (whole 512x512 slices 25-29, same predictor) on their
final weights. Results go to benchmarks/results/unet_isbi2012.json and the U-Net section of BENCHMARKS.md.

    python benchmarks/unet_isbi2012.py --budget 900          # 15 minutes each (the issue's setting)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_summary, replace_section, save_record  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.engine import build_model, build_run, evaluate, train  # noqa: E402
from pixelwise.engine.distributed import resolve_device  # noqa: E402

KEYS = ("pixel_error", "membrane_iou", "adapted_rand_error", "vi")
LOWER_IS_BETTER = {"pixel_error": True, "membrane_iou": False, "adapted_rand_error": True, "vi": True}


class SizeMultiple(nn.Module):
    """A same-size network that needs inputs divisible by `multiple` (smp's encoders need 32)."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, images):
        return self.net(images)

    def output_size(self, size: int) -> int:
        if size % self.multiple:
            raise ValueError(f"input size {size} is not a multiple of {self.multiple}")
        return size

    def input_size_for(self, size: int) -> int:
        return -(-size // self.multiple) * self.multiple


def peer_model() -> nn.Module:
    import segmentation_models_pytorch as smp

    return SizeMultiple(smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2), 32)


def run(name: str, cfg, net: nn.Module) -> dict:
    t0 = time.monotonic()
    state = train(cfg, model=net, progress=True)  # trains `net` in place
    if state.stopped == "signal":  # Ctrl-C / SIGTERM stops the whole comparison, not just this model
        sys.exit(130)
    seconds = time.monotonic() - t0
    device = resolve_device(cfg.train.device)
    val = build_run(cfg, model=net, splits=("val",)).val_ds
    t1 = time.monotonic()
    metrics = evaluate(net, val, cfg, device, progress=False)
    infer_s = (time.monotonic() - t1) / len(val)
    return {
        "model": name, "steps": state.step, "train_seconds": round(seconds, 1),
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        "infer_seconds_per_slice": round(infer_s, 2), **{k: metrics[k] for k in KEYS}, "miou": metrics["miou"],
    }


def table(results: list[dict]) -> str:
    head = "| model | params (M) | steps in budget | pixel error | membrane IoU | adapted Rand error | VI | s / slice (inference) |"
    rows = [head, "|" + "---|" * 8]
    for r in results:
        rows.append(f"| {r['model']} | {r['params_M']} | {r['steps']} | {r['pixel_error']:.4f} | "
                    f"{r['membrane_iou']:.4f} | {r['adapted_rand_error']:.4f} | {r['vi']:.4f} | "
                    f"{r['infer_seconds_per_slice']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=900, help="training seconds per model (default 900)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "unet_isbi2012_cpu.yaml"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_unet_isbi2012"))
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--title", default="U-Net on ISBI 2012 vs segmentation_models_pytorch",
                    help="BENCHMARKS.md section to write (one per budget or recipe you want to keep)")
    args = ap.parse_args()

    results = []
    for name, make in (("pixelwise unet (ours)", None), ("smp Unet(resnet18), encoder_weights=None", peer_model)):
        overrides = [f"train.time_limit={args.budget}", "train.max_steps=1000000", "train.val_every=1000000",
                     "train.ckpt_every=1000000", f"output_dir={args.out}/{'ours' if make is None else 'smp'}",
                     *args.override]
        cfg = load_config(args.config, overrides)
        if args.data_root:
            cfg.data.root = args.data_root
        torch.manual_seed(cfg.train.seed)
        results.append(run(name, cfg, make() if make else build_model(cfg)))
        print(json.dumps(results[-1], indent=2))

    ours, peer = results
    verdict = {k: (ours[k] < peer[k]) if LOWER_IS_BETTER[k] else (ours[k] > peer[k]) for k in KEYS}
    record = {"budget_seconds": args.budget, "config": str(Path(args.config).relative_to(ROOT)),
              "overrides": args.override, "machine": machine_summary(), "results": results,
              "ours_better": verdict, "date": time.strftime("%Y-%m-%d")}
    print(table(results))
    print("ours better on:", verdict)
    if not args.no_write:  # a trial run leaves the recorded results alone
        save_record(f"unet_isbi2012_{args.budget:g}s", record)
        body = (
            f"Command: `python benchmarks/unet_isbi2012.py --budget {args.budget:g}"
            f"{''.join(' -o ' + o for o in args.override)}` ({record['date']}, {record['machine']}).\n\n"
            f"Recipe `{record['config']}` for both models (same crops, augmentation, weight map, optimizer and "
            f"batch), {args.budget / 60:g} minutes of training each in the same process, evaluated on the final "
            f"weights on ISBI 2012 slices 25-29 (whole 512x512 slices; membrane = positive class; Rand and VI "
            f"on the connected cell regions).\n\n{table(results)}\n\n"
            f"Ours better on: {', '.join(k for k, v in verdict.items() if v) or 'none'}; "
            f"not better on: {', '.join(k for k, v in verdict.items() if not v) or 'none'}.\n"
        )
        replace_section(ROOT / "BENCHMARKS.md", args.title, body)


if __name__ == "__main__":
    main()
