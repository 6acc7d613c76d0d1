"""The papers' ablations re-run with `pixelwise reproduce` (issue 13): each experiment's table, its wall time.

Runs each named experiment (default: all) at its default budget (and --seeds) through pixelwise.reproduce, the
same code as `pixelwise reproduce NAME`, into --out (a folder outside the repository; finished runs are
kept, so a rerun after a crash resumes). Records the wall time of the whole experiment (training,
validation, summary and report) and its summary in benchmarks/results/reproduce.json, and rewrites the
"Reproduced ablations" section of BENCHMARKS.md from that record.

    PIXELWISE_DATA=../shared/data python benchmarks/reproduce.py --out /tmp/reproduce [--seeds N] [NAME ...]
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

RECORD = ROOT / "benchmarks" / "results" / "reproduce.json"
TITLE = "Reproduced ablations: pixelwise reproduce"


def claims_table(record: dict) -> str:
    """Every claim of every recorded experiment in one table, as `pixelwise reproduce --all`'s page has it."""
    from pixelwise.reproduce import EXPERIMENTS, claim_text

    rows = ["| experiment | claim | metric | paper | ours: difference [95% interval] | seeds | verdict |",
            "|---|---|---|---|---|---|---|"]
    for name in EXPERIMENTS:
        for c in record.get(name, {}).get("summary", {}).get("claims", []):
            if "verdict" not in c:  # recorded before claims had intervals
                continue
            rows.append(f"| {name} | {c['better']} better than {c['worse']} | {c['metric']} | {c['paper']} | "
                        f"{claim_text(c)} | {c['seeds']} | **{c['verdict']}** |")
    return "\n".join(rows)


def old_tables(summary: dict) -> str:
    """A record from before claims had intervals (one seed, or seeds without a verdict): its scores as they were."""
    m = summary["metric"]
    rows = [f"Recorded {summary['date']} with {summary['seeds']} seed(s) and {summary['budget_per_run']:g} s per run, "
            "before claims had intervals and verdicts; to be rerun at the new defaults.", "",
            f"| run | budget (s) | steps | {m} | paper |", "|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['budget']:.0f} | {'/'.join(map(str, r['steps']))} | "
             f"{'n/a' if r['mean'] is None else format(r['mean'], '.4f')} | {r['paper']} |" for r in summary["runs"]]
    rows += ["", "| paper's claim | paper | difference | direction held? |", "|---|---|---|---|"]
    rows += [f"| {c['better']} better than {c['worse']} | {c['paper']} | "
             f"{'n/a' if c.get('difference') is None else format(c['difference'], '+.4f')} | "
             f"{'n/a' if c.get('held') is None else 'yes' if c['held'] else 'no'} |" for c in summary["claims"]]
    return "\n".join(rows)


def section(record: dict) -> str:
    from pixelwise.progress import format_seconds
    from pixelwise.reproduce import EXPERIMENTS, summary_markdown

    parts = ["Written by `benchmarks/reproduce.py` from `benchmarks/results/reproduce.json`; each experiment is "
             "`pixelwise reproduce NAME` at its default budget, with the seeds its command line names, every run "
             "on the fast path and scored by its final validation. Wall time is the whole command: training, "
             "validation, summary and report. A claim's verdict comes from a 95% Student's t interval over the "
             "paired per-seed differences: held (on the paper's side of 0), reversed (on the other side), "
             "inconclusive (contains 0). What the verdicts mean is in \"Reproduced ablations: what held\".",
             "### Every claim\n\n" + claims_table(record)]
    if all(name in record for name in EXPERIMENTS):
        walls = {n: record[n]["wall_seconds"] for n in EXPERIMENTS}
        planned = sum(record[n]["planned_training_seconds"] for n in EXPERIMENTS)
        each = ", ".join(f"{n} {format_seconds(w)}" for n, w in walls.items())
        parts.append(f"All: {format_seconds(sum(walls.values()))} of wall time for {format_seconds(planned)} of "
                     f"planned training ({each}).")
    for name in EXPERIMENTS:
        if name not in record:
            parts.append(f"### {name}\n\nNot run yet.")
            continue
        r = record[name]
        md = summary_markdown(r["summary"]).split("\n", 1)[1].strip() if "level" in r["summary"] else old_tables(
            r["summary"])
        resumed = (f" (resumed: {r['runs_finished_before']} runs had finished before, so this is not the whole "
                   "experiment's time)" if r["runs_finished_before"] else "")
        parts.append(f"### {name}: {r['summary']['title']}\n\nWall time {format_seconds(r['wall_seconds'])} for "
                     f"{format_seconds(r['planned_training_seconds'])} of planned training{resumed}.\n\n{md}")
    return "\n\n".join(parts)


def main() -> None:
    from pixelwise.reproduce import EXPERIMENTS, SEEDS, default_names, reproduce

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=default_names(), help="experiments (default: the papers' claims)")
    p.add_argument("--out", help="folder for the runs, outside the repository (needed unless --table-only)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: PIXELWISE_DATA)")
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per run (default {SEEDS})")
    p.add_argument("--table-only", action="store_true", help="rewrite the section from the saved record")
    args = p.parse_args()
    if not args.table_only and (not args.out or Path(args.out).resolve().is_relative_to(ROOT)):
        p.error(f"--out {args.out}: keep the runs outside the repository")
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    for name in [] if args.table_only else args.names:
        finished_before = len(list((Path(args.out) / name).glob("*/seed*/result.json")))
        t0 = time.monotonic()
        summary = reproduce(name, out=args.out, data_root=args.data_root, seeds=args.seeds)
        record[name] = {"wall_seconds": time.monotonic() - t0, "summary": summary,
                        "planned_training_seconds": EXPERIMENTS[name].total() * args.seeds,
                        "runs_finished_before": finished_before,
                        "date": time.strftime("%Y-%m-%d %H:%M")}
        save_record("reproduce", record)  # after each experiment: a crash keeps the finished ones (--table-only)
    replace_section(ROOT / "BENCHMARKS.md", TITLE, section(record))
    print(section(record))


if __name__ == "__main__":
    main()
