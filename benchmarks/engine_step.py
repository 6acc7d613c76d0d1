"""Training step time of this checkout's engine against an earlier commit's, alternating in one process.

    PIXELWISE_DATA=../shared/data python benchmarks/engine_step.py --old REF [--steps 25 --rounds 3]

The earlier version is extracted with `git archive REF pixelwise` into a temporary folder as the
package `pixelwise_old` (its imports renamed), so both engines train the same recipe, with the same
seed and data, in the same process, one after the other (old, new, then new, old, ...), `--rounds` times each. A hook records the
time of every step; the first 5 steps of each run (warm-up) are left out, and the median step time
of each engine is reported with the ratio new / old. The losses of both must be identical.
"""
from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine_summary, replace_section, save_record  # noqa: E402

RECIPES = ("unet_isbi2012_cpu", "fcn8s_camvid_cpu", "mask_rcnn_r18_fpn_isbi_cpu")
WARMUP = 5


def extract_old(ref: str, into: Path) -> None:
    """`git archive REF pixelwise` as the package pixelwise_old (imports renamed)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "pixelwise"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "pixelwise").rename(into / "pixelwise_old")
    for path in (into / "pixelwise_old").rglob("*.py"):
        path.write_text(path.read_text().replace("pixelwise.", "pixelwise_old.").replace("import pixelwise\n",
                                                                                       "import pixelwise_old\n"))


class Times:
    """A hook for either engine: after_step(state or trainer, logs) records the time and the loss."""

    def __init__(self) -> None:
        self.times, self.losses = [time.perf_counter()], []

    def after_step(self, _, logs) -> None:
        self.times.append(time.perf_counter())
        self.losses.append(logs["loss"])

    def after_validation(self, *args) -> None:
        pass


def run_once(package: str, recipe: str, steps: int, out: Path) -> Times:
    config = importlib.import_module(f"{package}.config")
    trainer = importlib.import_module(f"{package}.engine.trainer")
    path = ROOT / "pixelwise" / "configs" / f"{recipe}.yaml"
    cfg = config.load_config(path, [f"train.max_steps={steps}", f"train.val_every={10 * steps}",
                                    f"train.ckpt_every={10 * steps}", "train.time_limit=null", f"output_dir={out}"])
    times = Times()
    trainer.train(cfg, hooks=(times,), progress=False)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="git ref of the engine to compare with")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="engine_step_"))
    extract_old(args.old, tmp)
    sys.path.insert(0, str(tmp))
    rows, record = [], {"old": args.old, "steps": args.steps, "rounds": args.rounds, "machine": machine_summary()}
    for recipe in args.recipes:
        step_times = {"pixelwise_old": [], "pixelwise": []}
        losses = {}
        for r in range(args.rounds):
            # ABBA order: neither engine always runs second (after the other has warmed or fragmented memory).
            for package in ("pixelwise_old", "pixelwise") if r % 2 == 0 else ("pixelwise", "pixelwise_old"):
                t = run_once(package, recipe, args.steps, tmp / f"{package}_{recipe}_{r}")
                step_times[package] += [b - a for a, b in zip(t.times[WARMUP:], t.times[WARMUP + 1:])]
                losses.setdefault(package, t.losses)
                print(f"{recipe} round {r} {package}: median step {statistics.median(step_times[package]):.3f} s",
                      flush=True)
        old, new = (statistics.median(step_times[k]) for k in ("pixelwise_old", "pixelwise"))
        same = losses["pixelwise_old"] == losses["pixelwise"]
        record[recipe] = {"old_s": old, "new_s": new, "ratio": new / old, "losses_identical": same,
                          "losses": losses["pixelwise"]}
        rows.append(f"| {recipe} | {old:.3f} | {new:.3f} | {new / old:.3f} | {'yes' if same else 'NO'} |")
        print(rows[-1], flush=True)
    save_record("engine_step", record)
    body = (f"Command: `python benchmarks/engine_step.py --old {args.old} --steps {args.steps} --rounds {args.rounds}`"
            f" on {record['machine']}. Each recipe trains {args.steps} steps {args.rounds} times with each engine, "
            "alternating in one process in ABBA order (same seed, data and recipe); median step time after 5 warm-up "
            "steps, over all rounds.\n\n"
            "| recipe | old engine s/step | new engine s/step | new / old | same losses |\n|---|---|---|---|---|\n"
            + "\n".join(rows))
    if args.write:
        replace_section(ROOT / "BENCHMARKS.md", "Engine restructure: step time, old vs new engine", body)
    print(body)


if __name__ == "__main__":
    main()
