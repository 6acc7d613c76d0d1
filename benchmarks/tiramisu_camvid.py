"""FC-DenseNet56 vs FCN-8s vs segmentation_models_pytorch Unet('resnet18') on CamVid at equal CPU time,
and the peak training memory of FC-DenseNet103 with and without memory-efficient dense blocks.

1. Training from scratch on CamVid train, --budget seconds each, in this process, one after the other:
   fc_densenet56 with configs/fc_densenet56_camvid_cpu.yaml; fcn8s with configs/fcn8s_camvid_cpu.yaml;
   the peer smp Unet('resnet18', encoder_weights=None) with the FC-DenseNet56 recipe (same data,
   crops, optimizer, batch). Final weights evaluated on CamVid val (101 images, whole 360x480).
2. Memory: each setting runs in a fresh subprocess that builds FC-DenseNet103 and takes --mem-steps
   training steps (batch 3, 224x224 crops, RMSprop); it reports its peak resident memory (ru_maxrss)
   and the time per step. The baseline process builds the model and stops before training.

    python benchmarks/tiramisu_camvid.py --budget 300
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_summary, replace_section, save_record, train_and_evaluate  # noqa: E402
from benchmarks.unet_isbi2012 import SizeMultiple  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.data import dataset_meta  # noqa: E402

KEYS = ("miou", "pixel_acc", "mean_acc")


def memory_probe(memory_efficient: bool, steps: int) -> None:
    """Child process: print peak RSS (MB) after building, and after `steps` training steps, as JSON."""
    import pixelwise

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = pixelwise.create_model("fc_densenet103", num_classes=11, memory_efficient=memory_efficient)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = torch.randn(3, 3, 224, 224), torch.randint(0, 11, (3, 224, 224))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"memory_efficient": memory_efficient, "built_MB": round(built), "peak_MB": round(peak),
                      "seconds_per_step": round(statistics.median(times[1:] or times), 2)}))


def memory_comparison(steps: int) -> list[dict]:
    out = []
    for flag in (False, True):
        proc = subprocess.run([sys.executable, __file__, "--memory-probe", str(int(flag)), "--mem-steps", str(steps)],
                              capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(out[-1])
    return out


def run(label: str, cfg, model=None) -> dict:
    state, model, metrics, seconds = train_and_evaluate(cfg, model)
    return {"model": label, "steps": state.step, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "infer_seconds_per_image": round(seconds, 3),
            **{k: metrics[k] for k in KEYS}, "per_class_iou": metrics["per_class_iou"]}


def training_comparison(args) -> list[dict]:
    import segmentation_models_pytorch as smp

    results = []
    for label, config, peer in (
        ("fc_densenet56 (ours)", "fc_densenet56_camvid_cpu.yaml", False),
        ("fcn8s (ours)", "fcn8s_camvid_cpu.yaml", False),
        ("smp Unet(resnet18), encoder_weights=None", "fc_densenet56_camvid_cpu.yaml", True),
    ):
        name = label.split()[0] if not peer else "smp_unet"
        cfg = load_config(ROOT / "configs" / config, [
            f"train.time_limit={args.budget}", "train.max_steps=1000000", "train.val_every=1000000",
            "train.ckpt_every=1000000", f"output_dir={args.out}/{name}", *args.override])
        if args.data_root:
            cfg.data.root = args.data_root
        torch.manual_seed(cfg.train.seed)
        model = SizeMultiple(smp.Unet("resnet18", encoder_weights=None, classes=11), 32) if peer else None
        results.append(run(label, cfg, model))
        print(json.dumps(results[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=300, help="training seconds per model (default 300)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_tiramisu_camvid"))
    ap.add_argument("--mem-steps", type=int, default=4)
    ap.add_argument("--memory-probe", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    ap.add_argument("--skip-training", action="store_true", help="only the memory comparison")
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    if args.memory_probe is not None:
        memory_probe(bool(args.memory_probe), args.mem_steps)
        return

    record = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d"), "budget_seconds": args.budget,
              "overrides": args.override, "memory": memory_comparison(args.mem_steps)}
    if not args.skip_training:
        record["training"] = training_comparison(args)
    if args.no_write:  # a trial run: leave the recorded results alone
        return
    save_record("tiramisu_camvid", record)
    plain, efficient = record["memory"]
    cmd = f"python benchmarks/tiramisu_camvid.py --budget {args.budget:g}" + "".join(f" -o {o}" for o in args.override)
    body = (
        f"Command: `{cmd}` ({record['date']}, {record['machine']}).\n\n"
        f"**Peak training memory, FC-DenseNet103**, batch 3 of 224x224 crops, RMSprop, {args.mem_steps} steps in a "
        f"fresh process (peak resident memory; the model alone, built, is {plain['built_MB']} MB):\n\n"
        "| dense blocks | peak RSS (MB) | training share (MB) | s / step |\n|---|---|---|---|\n"
        + "".join(f"| {'memory-efficient' if m['memory_efficient'] else 'plain'} | {m['peak_MB']} | "
                  f"{m['peak_MB'] - m['built_MB']} | {m['seconds_per_step']} |\n" for m in (plain, efficient))
        + f"\nMemory-efficient blocks use {(efficient['peak_MB'] - efficient['built_MB']) / max(1, plain['peak_MB'] - plain['built_MB']):.2f}x "
          f"the training memory at {efficient['seconds_per_step'] / plain['seconds_per_step']:.2f}x the time per step.\n"
    )
    if "training" in record:
        names = dataset_meta(load_config(ROOT / "configs" / "fc_densenet56_camvid_cpu.yaml").data)["class_names"]
        rows = ["| model | params (M) | steps | mean IoU | global acc. | mean acc. | s / image (360x480) |", "|" + "---|" * 7]
        for r in record["training"]:
            rows.append(f"| {r['model']} | {r['params_M']} | {r['steps']} | {r['miou']:.4f} | {r['pixel_acc']:.4f} | "
                        f"{r['mean_acc']:.4f} | {r['infer_seconds_per_image']} |")
        rows += ["", "| model | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for r in record["training"]:
            rows.append(f"| {r['model']} | " + " | ".join(f"{v:.3f}" for v in r["per_class_iou"]) + " |")
        body += (
            f"\n**Training from scratch on CamVid train, {args.budget:g} s each**, evaluated on CamVid val "
            f"(101 images, whole 360x480, void ignored). The paper's FC-DenseNet103 reaches 66.9 mean IoU and "
            f"91.5 global accuracy on the test split after long GPU training; a CPU budget of minutes "
            f"gets a small fraction of one such run.\n\n" + "\n".join(rows) + "\n"
        )
    replace_section(ROOT / "BENCHMARKS.md", "FC-DenseNet on CamVid vs FCN-8s and segmentation_models_pytorch", body)


if __name__ == "__main__":
    main()
