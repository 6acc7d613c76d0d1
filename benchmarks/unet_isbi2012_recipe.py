"""Why the CPU recipe is what it is: our U-Net with one change at a time, each for the same short budget.

    python benchmarks/unet_isbi2012_recipe.py --budget 150

Each variant trains configs/unet_isbi2012_cpu.yaml with the overrides listed, evaluated like the main
benchmark (final weights, slices 25-29). Writes the "U-Net CPU recipe choices" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_summary, replace_section  # noqa: E402
from benchmarks.unet_isbi2012 import run  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.engine import build_model  # noqa: E402

VARIANTS = {
    "border-only weight map (w0=10, sigma=5)": ["data.weight_map=true"],
    "same, without batch norm (the paper's network)": ["data.weight_map=true", "model.args.batch_norm=false"],
    "weight map with class balancing (paper eq. 2 in full)": ["data.weight_map=true", "data.class_balance=true"],
    "no weight map (the recipe now)": [],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=150)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    rows = []
    for name, overrides in VARIANTS.items():
        cfg = load_config(ROOT / "configs" / "unet_isbi2012_cpu.yaml", [
            f"train.time_limit={args.budget}", "train.max_steps=1000000", "train.val_every=1000000",
            "train.ckpt_every=1000000", f"output_dir={ROOT / 'runs' / 'bench_recipe' / str(len(rows))}", *overrides])
        if args.data_root:
            cfg.data.root = args.data_root
        torch.manual_seed(cfg.train.seed)
        r = run(name, cfg, build_model(cfg))
        rows.append(f"| {name} | `{' '.join(overrides) or '-'}` | {r['steps']} | {r['pixel_error']:.4f} | "
                    f"{r['membrane_iou']:.4f} | {r['adapted_rand_error']:.4f} | {r['vi']:.4f} |")
        print(rows[-1], flush=True)
    body = (f"Command: `python benchmarks/unet_isbi2012_recipe.py --budget {args.budget:g}` "
            f"({time.strftime('%Y-%m-%d')}, {machine_summary()}). Each variant trains "
            f"`configs/unet_isbi2012_cpu.yaml` for {args.budget:g} s with the overrides shown; final weights on slices "
            f"25-29. Short runs are noisy (the Rand error most): read them as directions, not rankings.\n\n"
            "| variant | overrides | steps | pixel error | membrane IoU | adapted Rand error | VI |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    replace_section(ROOT / "BENCHMARKS.md", "U-Net CPU recipe choices", body)


if __name__ == "__main__":
    main()
