"""Shared by the benchmark scripts: what machine ran them, and writing one section of BENCHMARKS.md."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {torch.get_num_threads()} threads"
    return f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the `## title` section of a Markdown file, leaving the others as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was produced by a script in `benchmarks/`; rerun it to check.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
