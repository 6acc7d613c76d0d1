"""FCN-32s vs FCN-16s vs FCN-8s on CamVid at a fixed CPU budget, and FCN-ResNet50 inference speed
against torchvision's fcn_resnet50 with identical weights.

1. Training (configs/fcn8s_camvid_cpu.yaml, from scratch: no pretrained weights exist here).
   "at once": each net trained for --budget seconds from the same random initialisation (same seed;
   the skip layers are zero-initialised, so the three start with identical weights and outputs).
   "staged" (FCN section 4.2): FCN-32s for budget/3, FCN-16s initialised from it for budget/3, FCN-8s
   from that for budget/3, the learning rate divided by --stage-lr-div at each stage.
   All evaluated on CamVid val (101 images, whole 360x480) with the FCN paper's four metrics.
2. Inference: our fcn_resnet50 and torchvision's, same random weights (ours loaded from its state
   dict), same inputs, alternated, median seconds per image; and the largest output difference.

    python benchmarks/fcn_camvid.py --budget 300
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_summary, replace_section, save_record, train_and_evaluate  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.data import dataset_meta  # noqa: E402

KEYS = ("miou", "pixel_acc", "mean_acc", "fwiou")


def run(label: str, cfg, budget: float) -> dict:
    cfg.train.time_limit = budget
    state, model, metrics, seconds = train_and_evaluate(cfg)
    return {"run": label, "model": cfg.model.name, "steps": state.step,
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "infer_seconds_per_image": round(seconds, 3),
            **{k: metrics[k] for k in KEYS}, "per_class_iou": metrics["per_class_iou"]}


def training_comparison(args) -> list[dict]:
    results = []
    base = ["train.max_steps=1000000", "train.val_every=1000000", "train.ckpt_every=1000000", *args.override]

    def config(name: str, out: str, extra=()):
        cfg = load_config(args.config, [*base, f"model.name={name}", f"output_dir={args.out}/{out}", *extra])
        if args.data_root:
            cfg.data.root = args.data_root
        return cfg

    for name in ("fcn32s", "fcn16s", "fcn8s"):
        results.append(run("at once", config(name, f"once_{name}"), args.budget))
        print(json.dumps(results[-1]))
    previous, lr = None, None
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        cfg = config(name, f"staged_{name}")
        lr = cfg.train.lr if lr is None else lr / args.stage_lr_div
        cfg.train.lr = lr
        cfg.model.init_from = previous
        results.append(run("staged", cfg, args.budget / 3))
        results[-1]["lr"] = lr
        previous = str(Path(cfg.output_dir) / "last.pt")
        print(json.dumps(results[-1]))
    return results


def inference_comparison(args) -> dict:
    import torchvision

    import pixelwise

    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=11).eval()
    path = Path(args.out) / "tv_fcn_resnet50.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), path)
    ours = pixelwise.create_model("fcn_resnet50", num_classes=11, weights=str(path)).eval()
    images = torch.randn(args.images, 1, 3, 360, 480)
    times = {"ours": [], "torchvision": []}
    diff = 0.0
    with torch.inference_mode():
        ours(images[0]), tv(images[0])  # warm-up
        for x in images:
            for name, forward in (("ours", lambda: ours(x)), ("torchvision", lambda: tv(x)["out"])):
                t0 = time.perf_counter()
                out = forward()
                times[name].append(time.perf_counter() - t0)
                if name == "ours":
                    mine = out
            diff = max(diff, (mine - out).abs().max().item())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"input": "1x3x360x480", "images": args.images, "seconds_per_image": {k: round(v, 3) for k, v in med.items()},
            "ratio_ours_over_torchvision": round(med["ours"] / med["torchvision"], 3), "max_abs_diff": diff}


def training_table(results: list[dict], class_names: list[str]) -> str:
    rows = ["| run | model | steps | mean IoU | pixel acc. | mean acc. | fw IoU | params (M) | s / image |",
            "|" + "---|" * 9]
    for r in results:
        rows.append(f"| {r['run']} | {r['model']} | {r['steps']} | {r['miou']:.4f} | {r['pixel_acc']:.4f} | "
                    f"{r['mean_acc']:.4f} | {r['fwiou']:.4f} | {r['params_M']} | {r['infer_seconds_per_image']} |")
    rows += ["", "Per-class IoU:", "", "| run | model | " + " | ".join(class_names) + " |",
             "|" + "---|" * (len(class_names) + 2)]
    for r in results:
        rows.append(f"| {r['run']} | {r['model']} | " + " | ".join(f"{v:.3f}" for v in r["per_class_iou"]) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=300, help="training seconds per net (default 300)")
    ap.add_argument("--stage-lr-div", type=float, default=100, help="learning rate divisor per stage (paper: 100)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "fcn8s_camvid_cpu.yaml"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_fcn_camvid"))
    ap.add_argument("--images", type=int, default=10, help="images for the inference-speed comparison")
    ap.add_argument("--skip-training", action="store_true", help="only the inference comparison")
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()

    record = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d"), "budget_seconds": args.budget,
              "config": str(Path(args.config).relative_to(ROOT)), "overrides": args.override,
              "stage_lr_div": args.stage_lr_div}
    record["inference"] = inference_comparison(args)
    print(json.dumps(record["inference"], indent=2))
    if not args.skip_training:
        record["training"] = training_comparison(args)
    if args.no_write:  # a trial run: leave the recorded results alone
        return
    save_record("fcn_camvid", record)
    cmd = f"python benchmarks/fcn_camvid.py --budget {args.budget:g}" + "".join(f" -o {o}" for o in args.override)
    inf = record["inference"]
    body = (
        f"Command: `{cmd}` ({record['date']}, {record['machine']}).\n\n"
        f"**Inference, FCN-ResNet50, ours vs torchvision** (same random weights, {inf['images']} inputs of "
        f"{inf['input']}, alternated, median): ours {inf['seconds_per_image']['ours']} s, torchvision "
        f"{inf['seconds_per_image']['torchvision']} s per image, ratio ours/torchvision "
        f"{inf['ratio_ours_over_torchvision']}; largest output difference {inf['max_abs_diff']:.2e}.\n"
    )
    if "training" in record:
        names = dataset_meta(load_config(args.config).data)["class_names"]
        body += (
            f"\n**Training from scratch on CamVid train** with `{record['config']}`, {args.budget:g} s per net "
            f"(\"at once\"), or {args.budget / 3:g} s per stage (\"staged\", FCN-16s from FCN-32s, FCN-8s from "
            f"FCN-16s, learning rate / {args.stage_lr_div:g} per stage), evaluated on CamVid val (101 images, "
            f"360x480, void ignored):\n\n{training_table(record['training'], names)}\n"
        )
    replace_section(ROOT / "BENCHMARKS.md", "FCN on CamVid: 32s vs 16s vs 8s, and FCN-ResNet50 vs torchvision", body)


if __name__ == "__main__":
    main()
