"""The first training losses of three CPU recipes, for checking that an engine change keeps the numbers.

    PIXELWISE_DATA=../shared/data python benchmarks/engine_parity.py --steps 20 --out losses.json

Run it on two checkouts (PYTHONPATH=OTHER_CHECKOUT python benchmarks/engine_parity.py ...) and compare
the JSON files: with the same seeds the losses must be identical. Uses only the public API
(load_config and train), so it runs on older versions too.
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

RECIPES = ("unet_isbi2012_cpu", "fcn8s_camvid_cpu", "mask_rcnn_r18_fpn_isbi_cpu")


def first_losses(recipe: str, steps: int) -> tuple[list[float], float]:
    import pixelwise
    from pixelwise.config import load_config
    from pixelwise.engine.trainer import train

    path = Path(pixelwise.__file__).parent / "configs" / f"{recipe}.yaml"
    if not path.exists():  # versions before the recipes were package data
        path = Path(pixelwise.__file__).parent.parent / "configs" / f"{recipe}.yaml"
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(path, [f"train.max_steps={steps}", "train.log_every=1", f"train.val_every={10 * steps}",
                                 f"train.ckpt_every={10 * steps}", "train.time_limit=null", f"output_dir={out}"])
        t0 = time.perf_counter()
        train(cfg, progress=False)
        seconds = time.perf_counter() - t0
        with open(Path(out) / "log.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss")]
    return [float(r["loss"]) for r in rows][:steps], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    results = {}
    for recipe in args.recipes:
        losses, seconds = first_losses(recipe, args.steps)
        results[recipe] = {"losses": losses, "seconds": seconds}
        print(recipe, f"{seconds:.1f} s", " ".join(f"{v:.6f}" for v in losses), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
