"""Shared by the benchmark scripts: what machine ran them, and writing one section of BENCHMARKS.md."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch


def cpu_features() -> dict:
    """The CPU's model name and the instructions bf16 / int8 speed depends on (Linux /proc/cpuinfo; False elsewhere).

    amx: AMX tiles with bf16 (Sapphire Rapids and later Xeons); avx512_bf16: bf16 dot products without AMX
    (AMD Zen 4, Cooper Lake); vnni: int8 dot products (avx512_vnni or avx_vnni).
    """
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": cpu, "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


def machine_summary() -> str:
    f = cpu_features()
    isa = ", ".join(f"{'' if f[k] else 'no '}{name}" for k, name in
                    (("amx", "AMX"), ("avx512_bf16", "avx512_bf16"), ("vnni", "VNNI")))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {torch.get_num_threads()} threads"
    return f"{f['cpu']} ({isa}), {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the `## title` section of a Markdown file, leaving the others as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was produced by a script in `benchmarks/`; rerun it to check.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def train_and_evaluate(cfg, model=None) -> tuple:
    """Train (cfg.model, or `model` in place), then evaluate the final weights on the val split.

    Returns (train state, trained model, val metrics, inference seconds per image). A Ctrl-C or
    SIGTERM during training stops the whole benchmark.
    """
    import sys
    import time

    from pixelwise.engine import build_run, train
    from pixelwise.inference import build_inference
    from pixelwise.engine.distributed import resolve_device

    state = train(cfg, model=model, progress=True)
    if state.stopped == "signal":
        sys.exit(130)
    if model is None:
        model = build_inference(Path(cfg.output_dir) / "last.pt", cfg=cfg).model
    run = build_run(cfg, model=model, splits=("val",))
    device = resolve_device(cfg.train.device)
    t0 = time.monotonic()
    metrics = run.task.evaluate(model.to(device), run.val_ds, device, progress=False)
    return state, model, metrics, (time.monotonic() - t0) / len(run.val_ds)


def save_record(name: str, record: dict) -> Path:
    """Write a benchmark's results to benchmarks/results/<name>.json."""
    import json

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    return path
