"""Where FCN-ResNet50's eager bf16 time goes, beside the same net compiled (issue 27).

    python benchmarks/fcn_resnet50_profile.py [--rounds 5]

Random weights, one 360 x 480 image, BatchNorm folded, channels_last, 2 threads. Alternating in this process
and nothing else in it: eager under bf16 autocast (what infer.precision=bf16 runs), eager with the weights cast
to bf16 once (the same outputs: autocast casts the same weights on every call), and torch.compile with frozen
weights (infer.compile). Prints the median seconds per call and the torch.profiler table of one eager call.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine_summary  # noqa: E402
from pixelwise import create_model  # noqa: E402
from pixelwise.engine.precision import compile_frozen, fold_batchnorm  # noqa: E402


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 360, 480)
    model = fold_batchnorm(create_model("fcn_resnet50", num_classes=21).eval(), (x,))[0]
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    in_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    compiled = compile_frozen(model)

    def autocast(net):
        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _out(net(x)).float()
        return call

    variants = {"eager, bf16 autocast": autocast(model),
                "eager, weights in bf16": lambda: _out(in_bf16(x.to(torch.bfloat16))).float(),
                "torch.compile, frozen weights": autocast(compiled)}
    times = {k: [] for k in variants}
    with torch.no_grad():
        reference = {k: f() for k, f in variants.items()}  # warm-up (and compilation)
        for _ in range(args.rounds):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        print(machine_summary())
        for k in variants:
            diff = (reference[k] - reference["eager, bf16 autocast"]).abs().max().item()
            print(f"{k}: {statistics.median(times[k]):.3f} s (max logit difference to autocast {diff:.2g})")
        from torch.profiler import profile

        with profile() as prof:
            variants["eager, bf16 autocast"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
