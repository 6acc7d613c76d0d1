"""Same numbers before and after a restructuring: first losses, eval of saved checkpoints, exported files.

    # on the old checkout: train, evaluate, export, and keep the files
    PYTHONPATH=OLD python benchmarks/refactor_parity.py make --dir /tmp/parity/old
    # on the new checkout: the same again, then the old checkpoints and exports read by the new code
    python benchmarks/refactor_parity.py make --dir /tmp/parity/new
    python benchmarks/refactor_parity.py check --old /tmp/parity/old --new /tmp/parity/new --out RESULT.json

`make` trains each CPU recipe for --steps steps (its first losses go to losses.json), evaluates the
last.pt on the first --images validation images (metrics.json), and exports the U-Net and the Mask R-CNN
as ONNX and evaluates the exports. `check` evaluates the old checkpoints and exports with the code it
runs on and compares everything with the old results: the losses, the metrics of the old checkpoints
and exports read by the new code, and of the new exports, must be identical. Uses only the command line and the public API, so it runs on older versions too.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

RECIPES = ("unet_isbi2012_cpu", "fcn8s_camvid_cpu", "fc_densenet56_camvid_cpu", "mask_rcnn_r18_fpn_isbi_cpu")
EXPORTED = ("unet_isbi2012_cpu", "mask_rcnn_r18_fpn_isbi_cpu")


def pixelwise(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pixelwise", *args], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL)


def evaluate(checkpoint: Path, out: Path, images: int) -> dict:
    pixelwise("eval", "--checkpoint", str(checkpoint), "--out", str(out), "-o", f"data.limit={images}")
    metrics = json.loads(out.read_text())
    metrics.pop("checkpoint", None)  # the path differs between the two folders
    return metrics


def make(folder: Path, steps: int, images: int) -> None:
    losses = {}
    for recipe in RECIPES:
        run = folder / recipe
        if not (run / "last.pt").exists():
            pixelwise("train", recipe, "--output-dir", str(run), "-o", f"train.max_steps={steps}", "-o", "train.log_every=1",
                      "-o", f"train.val_every={10 * steps}", "-o", f"train.ckpt_every={10 * steps}",
                      "-o", "train.time_limit=null", "--no-report")
        with open(run / "log.csv") as f:
            losses[recipe] = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")][:steps]
        evaluate(run / "last.pt", run / "eval.json", images)
        if recipe in EXPORTED:
            onnx = run / "model.onnx"
            if not onnx.exists():
                pixelwise("export", "--checkpoint", str(run / "last.pt"), "--format", "onnx", "--out", str(onnx))
            evaluate(onnx, run / "eval_onnx.json", images)
        print(recipe, "done", flush=True)
    (folder / "losses.json").write_text(json.dumps(losses, indent=1))


def check(old: Path, new: Path, images: int) -> dict:
    result = {"losses_identical": {}, "old_checkpoint_eval_identical": {}, "old_export_eval_identical": {},
              "new_export_eval_identical": {}}
    old_losses, new_losses = (json.loads((f / "losses.json").read_text()) for f in (old, new))
    for recipe in RECIPES:
        result["losses_identical"][recipe] = old_losses[recipe] == new_losses[recipe]
        reference = json.loads((old / recipe / "eval.json").read_text())
        reference.pop("checkpoint", None)
        again = evaluate(old / recipe / "last.pt", new / recipe / "eval_of_old.json", images)
        result["old_checkpoint_eval_identical"][recipe] = again == reference
        if recipe in EXPORTED:
            reference = json.loads((old / recipe / "eval_onnx.json").read_text())
            reference.pop("checkpoint", None)
            again = evaluate(old / recipe / "model.onnx", new / recipe / "eval_of_old_onnx.json", images)
            result["old_export_eval_identical"][recipe] = again == reference
            ours = json.loads((new / recipe / "eval_onnx.json").read_text())
            ours.pop("checkpoint", None)
            result["new_export_eval_identical"][recipe] = ours == reference
    result["all_identical"] = all(v for group in result.values() if isinstance(group, dict) for v in group.values())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("make", "check"))
    p.add_argument("--dir", type=Path)
    p.add_argument("--old", type=Path)
    p.add_argument("--new", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args()
    if args.mode == "make":
        args.dir.mkdir(parents=True, exist_ok=True)
        make(args.dir, args.steps, args.images)
        return
    result = check(args.old, args.new, args.images)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
