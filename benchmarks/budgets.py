"""How each reproduce experiment's baseline grows with its budget (issue 26): the budget at which a claim can show.

For each baseline (the recipe and settings an experiment's claims compare against) and a candidate budget B, trains
it for B and for 4 B seconds (seed 0, the fast path, scored by the final validation, exactly as
`pixelwise reproduce` trains its runs; two separate runs because the poly schedule decays over the budget) and
records the fraction of the 4 B score reached at B. For a lower-is-better metric the fraction is of 1 - metric.
Runs go to --out and are resumed or skipped when the command is run again; the record is
benchmarks/results/budgets.json and the "Reproduce budgets" section of BENCHMARKS.md.

    PIXELWISE_DATA=../shared/data python benchmarks/budgets.py --out /tmp/budgets fcn8s-camvid:120 unet-isbi:120
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import replace_section, save_record  # noqa: E402
from pixelwise.reproduce import MRCNN_CHEAPER  # noqa: E402

RECORD = ROOT / "benchmarks" / "results" / "budgets.json"
TITLE = "Reproduce budgets: how far each baseline gets"
# name: (recipe, overrides, metric, the experiments whose default budget it sets)
BASELINES = {
    "fcn8s-camvid": ("fcn8s_camvid_cpu", (), "miou",
                     "fcn-skips, fcn-loss-sampling, fcn-class-balance, fcn-shift-and-stitch, crf"),
    "unet-isbi": ("unet_isbi2012_cpu", ("data.weight_map=false",), "vrand_sweep", "unet-weightmap, unet-elastic"),
    "maskrcnn-isbi": ("mask_rcnn_r18_fpn_isbi_cpu", ("model.args.mask_roi=roi_align", *MRCNN_CHEAPER), "segm_AP",
                      "maskrcnn-table2"),
    "fcdn56-camvid": ("fc_densenet56_camvid_cpu", ("model.name=fc_densenet56",), "miou", "tiramisu-vs-fcn"),
}


def measure(name: str, budget: float, out: str, data_root: str | None, overrides=()) -> dict:
    from pixelwise.metrics import LOWER_IS_BETTER
    from pixelwise.reproduce import Claim, Experiment, Planned, reproduce

    recipe, extra, metric, _ = BASELINES[name]
    exp = Experiment(f"budget-{name}", f"{name} at {budget:g} s and {4 * budget:g} s", "", metric, budget,
                     runs=(Planned("B", recipe, extra), Planned("4 B", recipe, extra, share=4)),
                     claims=(Claim("4 B", "B", ""),))
    t0 = time.monotonic()
    summary = reproduce(exp, out=out, data_root=data_root, overrides=overrides, seeds=1, report=False)
    score = {r["run"]: r["mean"] for r in summary["runs"]}
    good = (lambda v: 1 - v) if metric in LOWER_IS_BETTER else (lambda v: v)
    return {"baseline": name, "recipe": recipe, "overrides": list(extra), "metric": metric, "budget": budget,
            "score_at_budget": score["B"], "score_at_4x": score["4 B"], "fraction": good(score["B"]) / good(score["4 B"]),
            "steps": {r["run"]: r["steps"][0] for r in summary["runs"]}, "machine": summary["machine"],
            "wall_seconds": time.monotonic() - t0, "date": time.strftime("%Y-%m-%d")}


def section(record: dict) -> str:
    rows = ["| baseline | metric | budget B (s) | steps at B / 4 B | score at B | score at 4 B | fraction reached | "
            "sets the budget of |", "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(record.items()):
        rows.append(f"| {r['baseline']} (`{r['recipe']}` {' '.join(r['overrides'])}) | {r['metric']} | {r['budget']:g} | "
                    f"{r['steps']['B']} / {r['steps']['4 B']} | {r['score_at_budget']:.4f} | {r['score_at_4x']:.4f} | "
                    f"{r['fraction']:.0%} | {BASELINES[r['baseline']][3]} |")
    machines = sorted({r["machine"] for r in record.values()})
    return ("Written by `benchmarks/budgets.py` from `benchmarks/results/budgets.json`: each baseline trained for B "
            "and for 4 B seconds (seed 0, fast path, final validation, as `pixelwise reproduce` trains), and the "
            "fraction of the 4 B score reached at B (of 1 - metric for a lower-is-better metric). Machine: "
            f"{'; '.join(machines)}.\n\n" + "\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("items", nargs="*", help="BASELINE:SECONDS, baselines: " + ", ".join(BASELINES))
    p.add_argument("--out", help="folder for the runs, outside the repository")
    p.add_argument("--data-root", default=None)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    for item in [] if args.table_only else args.items:
        name, _, seconds = item.partition(":")
        if name not in BASELINES or not seconds:
            p.error(f"{item!r}: expected BASELINE:SECONDS with BASELINE one of {', '.join(BASELINES)}")
        if not args.out or Path(args.out).resolve().is_relative_to(ROOT):
            p.error("--out: a folder outside the repository is needed")
        record[f"{name}:{float(seconds):g}"] = measure(name, float(seconds), args.out, args.data_root)
        save_record("budgets", record)
    replace_section(ROOT / "BENCHMARKS.md", TITLE, section(record))
    print(section(record))


if __name__ == "__main__":
    main()
