"""The network's own cost of refining FCN-32s by shift-and-stitch (filter rarefaction) against FCN-8s's skips
(issue 26; FCN section 4.2, "Refinement by other means").

    python benchmarks/shift_and_stitch_cost.py [--rounds 5]

`pixelwise reproduce fcn-shift-and-stitch` times whole evaluations (data loading and metrics included). Here
only the forward pass is timed, in one process, side by side and interleaved: the CPU recipe's FCN-32s at output
stride 32, 16 and 8 (model.args.output_stride: the same weights, the layers after pool4 / pool3 rarefied) and
its FCN-8s, on a CamVid-sized input (1 x 3 x 360 x 480), in the recipe's inference precision (bf16 +
channels_last) and in fp32. Median of --rounds rounds of 3 passes each; ratios to FCN-8s. Record:
benchmarks/results/shift_and_stitch_cost.json and BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_features, machine_summary, replace_section, save_record  # noqa: E402

TITLE = "Shift-and-stitch against skips: the forward pass alone"
NETS = {"FCN-32s, stride 32": ("fcn32s", 32), "FCN-32s, shift-and-stitch to stride 16": ("fcn32s", 16),
        "FCN-32s, shift-and-stitch to stride 8": ("fcn32s", 8), "FCN-8s, skips": ("fcn8s", 32)}


def build(name: str, stride: int) -> torch.nn.Module:
    from pixelwise.config import load_config, resolve_config
    from pixelwise.registry import create_model

    args = dict(load_config(resolve_config("fcn8s_camvid_cpu")).model.args)
    if stride != 32:
        args["output_stride"] = stride
    return create_model(name, num_classes=11, **args).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 360, 480)
    results = {}
    for precision in ("bf16", "fp32"):
        nets = {label: build(*spec) for label, spec in NETS.items()}
        times: dict[str, list[float]] = {label: [] for label in nets}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            xs = x.to(memory_format=torch.channels_last) if precision == "bf16" else x
            for net in nets.values():
                if precision == "bf16":
                    net.to(memory_format=torch.channels_last)
                net(xs)  # warm-up
            for _ in range(args.rounds):
                for label, net in nets.items():  # interleaved: drift hits every net alike
                    t0 = time.perf_counter()
                    for _ in range(3):
                        net(xs)
                    times[label].append((time.perf_counter() - t0) / 3)
        base = statistics.median(times["FCN-8s, skips"])
        results[precision] = {label: {"seconds": statistics.median(t), "ratio_to_fcn8s": statistics.median(t) / base}
                              for label, t in times.items()}
        for label, r in results[precision].items():
            print(f"{precision}: {label}: {r['seconds'] * 1000:.1f} ms ({r['ratio_to_fcn8s']:.2f}x FCN-8s)", flush=True)
    record = {"results": results, "rounds": args.rounds, "machine": machine_summary(), "cpu": cpu_features(),
              "date": time.strftime("%Y-%m-%d")}
    save_record("shift_and_stitch_cost", record)
    lines = ["| net | bf16 + channels_last: ms | x FCN-8s | fp32: ms | x FCN-8s |", "|---|---|---|---|---|"]
    for label in NETS:
        b, f = results["bf16"][label], results["fp32"][label]
        lines.append(f"| {label} | {b['seconds'] * 1000:.1f} | {b['ratio_to_fcn8s']:.2f} | {f['seconds'] * 1000:.1f} | "
                     f"{f['ratio_to_fcn8s']:.2f} |")
    replace_section(ROOT / "BENCHMARKS.md", TITLE,
                    f"Command: `python benchmarks/shift_and_stitch_cost.py --rounds {args.rounds}` ({record['date']}, "
                    f"{record['machine']}). The CPU recipe's nets (configs/fcn8s_camvid_cpu.yaml: a quarter of VGG16's "
                    "widths), random weights, one 360 x 480 image; median of the rounds, each net timed in turn.\n\n"
                    + "\n".join(lines))


if __name__ == "__main__":
    main()
