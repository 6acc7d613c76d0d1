"""`make demo` and `make test` as a new user runs them: a fresh clone in an empty folder, an empty home, no data
root; then the same clone with the datasets (issue 23).

    python benchmarks/fresh_clone.py [--data-root ../shared/data] [--out benchmarks/results/fresh_clone.json]

Each phase is run once (wall time, exit code) and recorded as soon as it ends, so a crash keeps what was measured:
  no data    `make demo` (creates .venv, then the demo on the bundled sample), then `make test`
  with data  PIXELWISE_DATA=DATA `make demo` and `make test` in the same clone (its .venv already made)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())
    amx = "with AMX" if "amx_bf16" in info else "without AMX"
    return f"{model}, {os.cpu_count()} cores, {amx}"


def run(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    start = time.monotonic()
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    result = {"command": " ".join(cmd), "exit_code": code, "seconds": round(seconds, 1), "log": str(log)}
    summary = re.findall(r"=+ (.*(?:passed|failed).*) in [\d.]+s", text)
    if summary:
        result["pytest"] = summary[-1]
        result.update({k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", summary[-1])})
    missing = [ln for ln in text.splitlines() if ln.startswith("pixelwise:")]
    if missing:
        result["datasets"] = missing
    first = next((ln for ln in text.splitlines() if ln.startswith("pixelwise demo:")), None)
    if first:
        result["demo_first_line"] = first
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fresh_clone.json"))
    p.add_argument("--skip-data", action="store_true", help="only the run without datasets")
    p.add_argument("--table-only", action="store_true", help="only rewrite BENCHMARKS.md's section from --out")
    args = p.parse_args()
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    if args.table_only:
        write_section(record)
        return
    base = Path(tempfile.mkdtemp(prefix="pixelwise-fresh-"))
    clone, home = base / "pixelwise", base / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    record.update(date=time.strftime("%Y-%m-%d"), commit=commit, machine=cpu(), python=sys.version.split()[0])
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELWISE_DATA", "CI", "VIRTUAL_ENV")}
    env["HOME"] = str(home)
    phases = [("no_data", "demo", env), ("no_data", "test", env)]
    if not args.skip_data:
        phases += [("with_data", "demo", {**env, "PIXELWISE_DATA": str(Path(args.data_root).resolve())}),
                   ("with_data", "test", {**env, "PIXELWISE_DATA": str(Path(args.data_root).resolve())})]
    for setting, target, phase_env in phases:
        print(f"{setting}: make {target} in {clone} ...", file=sys.stderr, flush=True)
        result = run(["make", target], clone, phase_env, base / f"{setting}-{target}.log")
        if target == "demo" and (clone / "runs" / "demo" / "metrics.json").exists():
            metrics = json.loads((clone / "runs" / "demo" / "metrics.json").read_text())
            result["scores"] = {k: round(metrics[k], 4) for k in ("adapted_rand_error", "membrane_iou", "pixel_error", "vi")}
            result["dataset"] = _dataset(clone / "runs" / "demo" / "config.yaml")
            (clone / "runs").rename(base / f"runs-{setting}")  # the next demo starts in an empty folder
        record.setdefault(setting, {})[target] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(result, indent=2), file=sys.stderr, flush=True)
    write_section(record)


TITLE = "Runs anywhere: make demo and make test on a fresh clone"


def write_section(record: dict) -> None:
    """BENCHMARKS.md's section from the record (also run by --table-only)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import replace_section

    rows = []
    for setting, label in (("no_data", "no data root, empty home"), ("with_data", "datasets at PIXELWISE_DATA")):
        for target in ("demo", "test"):
            r = record.get(setting, {}).get(target)
            if r is None:
                rows.append(f"| {label} | make {target} | not run | | |")
                continue
            if target == "demo":
                sc = r.get("scores", {})
                what = (f"{r.get('dataset')}: adapted Rand error {sc.get('adapted_rand_error')}, membrane IoU "
                        f"{sc.get('membrane_iou')}, pixel error {sc.get('pixel_error')}")
            else:
                what = (f"{r.get('passed', 0)} passed, {r.get('skipped', 0)} skipped, {r.get('failed', 0)} failed, "
                        f"{r.get('deselected', 0)} deselected (slow)")
            rows.append(f"| {label} | make {target} | {r['exit_code']} | {r['seconds'] / 60:.1f} min | {what} |")
    notes = [f"- {line}" for s in ("no_data", "with_data") for line in record.get(s, {}).get("test", {}).get("datasets", [])]
    body = "\n".join([
        f"`python benchmarks/fresh_clone.py` ({record.get('date')}, commit {record.get('commit')}, {record.get('machine')}, "
        f"Python {record.get('python')}): `git clone` of the checkout into an empty temporary folder (no ../shared/data "
        "beside it), HOME an empty folder, PIXELWISE_DATA and CI unset; `make demo` then `make test` there (the first "
        "`make demo` creates .venv: pip installs torch 2.14.1 from this machine's disk, the rest from PyPI with no pip "
        "cache); then the same two commands in the same clone with PIXELWISE_DATA set (its .venv already made). One run "
        "each; wall times include everything make does.",
        "",
        "| setting | command | exit | wall time | result |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "What the test runs said about the datasets:" if notes else "",
        *notes,
    ])
    replace_section(REPO / "BENCHMARKS.md", TITLE, body)


def _dataset(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["data"]["dataset"]


if __name__ == "__main__":
    main()
