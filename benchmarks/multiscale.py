"""Multi-scale and flip test-time augmentation on CamVid (issue 29): mean IoU and seconds per image.

    PIXELWISE_DATA=../shared/data python benchmarks/multiscale.py CHECKPOINT [CHECKPOINT ...]

Each checkpoint (for example the three seeds of `pixelwise reproduce fcn-class-balance`'s FCN-8s runs) is
evaluated on its recipe's validation split as `pixelwise eval` does, once per setting: the image as it is,
infer.tta (8 flips / rotations), infer.tta=hflip (the image and its mirror image), infer.scales [0.75, 1, 1.25]
alone and with the mirror image, [0.5, 0.75, 1, 1.25, 1.5], and the latter with flips. For each setting: mean IoU per checkpoint, the paired difference to the plain image (its mean and 95%
t-interval over the checkpoints) and evaluation seconds per image. The record is
benchmarks/results/multiscale.json; the table goes to BENCHMARKS.md.
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

TITLE = "Multi-scale test-time augmentation (infer.scales)"
SETTINGS = {"the image as it is": [],
            "flips (infer.tta)": ["infer.tta=true"],
            "mirror image (infer.tta=hflip)": ["infer.tta=hflip"],
            "scales 0.75, 1, 1.25": ["infer.scales=[0.75,1.0,1.25]"],
            "scales 0.75, 1, 1.25 + mirror image": ["infer.scales=[0.75,1.0,1.25]", "infer.tta=hflip"],
            "scales 0.5 - 1.5": ["infer.scales=[0.5,0.75,1.0,1.25,1.5]"],
            "scales 0.5 - 1.5 + flips": ["infer.scales=[0.5,0.75,1.0,1.25,1.5]", "infer.tta=true"]}


def evaluate(ckpt: Path, overrides: list[str]) -> tuple[float, float]:
    from pixelwise.engine.run import build_datasets
    from pixelwise.inference import build_inference

    inference = build_inference(ckpt, overrides=overrides)
    ds = build_datasets(inference.cfg, inference.model, splits=("val",), task=inference.task)["val"]
    t0 = time.perf_counter()
    metrics = inference.task.evaluate(inference.model, ds, inference.device, progress=False)
    return metrics["miou"], (time.perf_counter() - t0) / len(ds)


def table(record: dict) -> str:
    from pixelwise.reproduce import t_interval

    lines = ["| setting | mean IoU (each checkpoint) | difference to the plain image, mean [95% t-interval] | "
             "s / image |", "|---|---|---|---|"]
    base = {c: r["miou"] for c, r in record["results"][next(iter(SETTINGS))].items()}
    for setting in SETTINGS:
        rows = record["results"].get(setting)
        if not rows:
            continue
        diffs = [r["miou"] - base[c] for c, r in rows.items() if c in base]
        ci = t_interval(diffs) if len(diffs) > 1 else None
        seconds = sum(r["seconds_per_image"] for r in rows.values()) / len(rows)
        each = ", ".join("%.4f" % r["miou"] for r in rows.values())
        lines.append(f"| {setting} | {each} | "
                     f"{sum(diffs) / len(diffs):+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
                     + f" | {seconds:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    path = ROOT / "benchmarks" / "results" / "multiscale.json"
    record = json.loads(path.read_text()) if path.exists() else {"results": {}}
    for setting, overrides in SETTINGS.items():
        for ckpt in args.checkpoints:
            done = record["results"].setdefault(setting, {})
            if str(ckpt) in done:  # resumable: a setting measured before is kept
                continue
            miou, seconds = evaluate(ckpt, overrides)
            done[str(ckpt)] = {"miou": miou, "seconds_per_image": seconds}
            print(f"{setting}: {ckpt}: mIoU {miou:.4f}, {seconds:.3f} s/image", flush=True)
            record.update(machine=machine_summary(), cpu=cpu_features(), date=time.strftime("%Y-%m-%d"))
            save_record("multiscale", record)
    body = (f"Command: `python benchmarks/multiscale.py CHECKPOINT ...` ({record['date']}, {record['machine']}). "
            f"Checkpoints: {', '.join(sorted(next(iter(record['results'].values()))))}. Validation split of "
            "each checkpoint's recipe; seconds per image include data loading, the same for every setting.\n\n"
            + table(record))
    replace_section(ROOT / "BENCHMARKS.md", TITLE, body)


if __name__ == "__main__":
    main()
