"""The fast path in training: steps per second, and scores at equal time, fp32 vs bf16 (issue 12).

    PIXELWISE_DATA=../shared/data python benchmarks/fast_path.py steps [--steps 20 --rounds 2]
    PIXELWISE_DATA=../shared/data python benchmarks/fast_path.py equal-time [--budget 300] [--recipes ...]

`steps`: each CPU recipe trains --steps steps as fp32, bf16, and bf16 + channels_last, alternating
in one process (--rounds times, the order rotated each round); median step time after 5 warm-up
steps, and the ratio to fp32.

`equal-time`: each recipe trains --budget seconds in fp32 and in bf16 (+ channels_last where the
`steps` table shows it helps), one after the other; both final checkpoints are evaluated on the
recipe's val split with fp32 PyTorch, and the bf16 run's also with bf16 inference and exported to
ONNX (ONNX Runtime) and OpenVINO bf16: the quality the fast path and the exported models keep.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine_summary, replace_section, save_record  # noqa: E402
from benchmarks.engine_step import Times, WARMUP  # noqa: E402

RECIPES = ("unet_isbi2012_cpu", "fcn8s_camvid_cpu", "fc_densenet56_camvid_cpu", "mask_rcnn_r18_fpn_isbi_cpu")
# Each variant sets both keys: the CPU recipes themselves now train in bf16 + channels_last.
VARIANTS = {"fp32": ["train.precision=fp32", "train.channels_last=false"],
            "bf16": ["train.precision=bf16", "train.channels_last=false"],
            "bf16 + channels_last": ["train.precision=bf16", "train.channels_last=true"]}
SCORES = {"unet_isbi2012_cpu": ("adapted_rand_error", "pixel_error", "membrane_iou"),
          "fcn8s_camvid_cpu": ("miou", "pixel_acc"), "fc_densenet56_camvid_cpu": ("miou", "pixel_acc"),
          "mask_rcnn_r18_fpn_isbi_cpu": ("segm_AP", "bbox_AP")}


def _cfg(recipe: str, out: Path, overrides: list[str]):
    from pixelwise.config import load_config

    return load_config(ROOT / "pixelwise" / "configs" / f"{recipe}.yaml", [f"output_dir={out}", *overrides])


class StopAtEnd(Times):
    """Times, and a stop request at the last step, so that the run ends without its final validation."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def after_step(self, trainer, logs) -> None:
        super().after_step(trainer, logs)
        if trainer.state.step >= self.steps:
            trainer.state.stop_requested = True


def steps(args, tmp: Path) -> None:
    from pixelwise.engine import train

    path = ROOT / "benchmarks" / "results" / "fast_path_steps.json"
    # Recipes measured before keep their rows; each recipe's row comes from one run of this command.
    record = json.loads(path.read_text()) if path.exists() else {}
    record["machine"] = machine_summary()
    for recipe in args.recipes:
        times = {v: [] for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            for v in names[r % len(names):] + names[: r % len(names)]:
                t = StopAtEnd(args.steps)
                cfg = _cfg(recipe, tmp / f"{recipe}-{r}-{v}", [*VARIANTS[v], f"train.max_steps={args.steps}",
                                                               f"train.val_every={10 * args.steps}", "train.time_limit=null",
                                                               f"train.ckpt_every={10 * args.steps}"])
                train(cfg, hooks=(t,), progress=False)
                times[v] += [b - a for a, b in zip(t.times[WARMUP:], t.times[WARMUP + 1:])]
                print(f"{recipe} round {r} {v}: median {statistics.median(times[v]):.3f} s/step", flush=True)
        record[recipe] = {"s_per_step": {v: statistics.median(t) for v, t in times.items()}, "steps": args.steps,
                          "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M")}
        save_record("fast_path_steps", record)
    rows = []
    for recipe in RECIPES:
        if recipe in record:
            t, base = record[recipe]["s_per_step"], record[recipe]["s_per_step"]["fp32"]
            rows.append(f"| {recipe} | " + " | ".join(f"{t[v]:.3f} ({base / t[v]:.2f}x)" for v in VARIANTS)
                        + f" | {record[recipe]['steps']} x {record[recipe]['rounds']} |")
    body = (f"Command: `python benchmarks/fast_path.py steps [--recipes R ...] [--steps 20 --rounds 2]` "
            f"({record['machine']}). Each recipe trains the given steps per variant, alternating in one process "
            f"(rounds, order rotated); median seconds per step after {WARMUP} warm-up steps (no validation), "
            "and the speed-up over fp32 in the same run.\n\n"
            "| recipe | fp32 s/step | bf16 s/step | bf16 + channels_last s/step | steps x rounds |\n|---|---|---|---|---|\n"
            + "\n".join(rows))
    replace_section(ROOT / "BENCHMARKS.md", "Fast path: training steps per second, fp32 vs bf16", body)
    print(body)


def _scores(metrics: dict, recipe: str) -> str:
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in SCORES[recipe])


def equal_time(args, tmp: Path) -> None:
    from pixelwise.export import export
    from pixelwise.engine import train
    from pixelwise.inference import build_inference
    from pixelwise.engine.run import build_datasets

    def evaluate(checkpoint, overrides=(), runtime=None):
        inference = build_inference(checkpoint, overrides=list(overrides), runtime=runtime)
        ds = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
        t0 = time.monotonic()
        metrics = inference.task.evaluate(inference.model, ds, inference.device, progress=False)
        return metrics, (time.monotonic() - t0) / len(ds)

    path = ROOT / "benchmarks" / "results" / "fast_path_equal_time.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if "recipes" not in record:  # the first record held one budget for all of its recipes
        record = {"recipes": {r: {"budget": record["budget"], "machine": record["machine"], "results": v}
                              for r, v in record.items() if r in SCORES}}
    for recipe in args.recipes:
        fast = args.fast.get(recipe, "bf16")
        runs = {}
        for v in ("fp32", fast):
            out = tmp / f"{recipe}-{v.replace(' ', '')}"
            cfg = _cfg(recipe, out, [*VARIANTS[v], f"train.time_limit={args.budget}", "train.max_steps=100000",
                                     f"train.val_every={10 ** 6}"])
            state = train(cfg, progress=True)
            runs[v] = (out / "last.pt", state.step)
        results = {}
        for v, (ckpt, n) in runs.items():
            results[f"{v} training, fp32 inference"] = (n, *evaluate(ckpt, ["infer.precision=fp32",
                                                                         "infer.channels_last=false"]))
        ckpt, n = runs[fast]
        results[f"{fast} training, bf16 + channels_last inference"] = (n, *evaluate(
            ckpt, ["infer.precision=bf16", "infer.channels_last=true"]))
        onnx = tmp / f"{recipe}.onnx"
        export(ckpt, "onnx", onnx, progress=False)
        results[f"{fast} training, ONNX Runtime fp32"] = (n, *evaluate(onnx, runtime="onnxruntime"))
        results[f"{fast} training, OpenVINO bf16"] = (n, *evaluate(onnx, ["infer.precision=bf16"], runtime="openvino"))
        record["recipes"][recipe] = {
            "budget": args.budget, "machine": machine_summary(), "date": time.strftime("%Y-%m-%d"),
            "results": {k: {"steps": n, "metrics": {m: v for m, v in met.items() if isinstance(v, float)},
                            "s_per_image": s} for k, (n, met, s) in results.items()}}
        for k, (n, met, s) in results.items():
            print(f"| {recipe} | {k} | {n} | {_scores(met, recipe)} | {s:.2f} |", flush=True)
        save_record("fast_path_equal_time", record)
    rows = [f"| {recipe} | {r['budget']:g} | {k} | {v['steps']} | {_scores(v['metrics'], recipe)} | {v['s_per_image']:.2f} |"
            for recipe, r in record["recipes"].items() for k, v in r["results"].items()]
    machines = sorted({r["machine"] for r in record["recipes"].values()})
    body = ("Command: `python benchmarks/fast_path.py equal-time --budget SECONDS --recipes RECIPE... [--fast JSON]` "
            f"(one run per recipe, merged into one table; {'; '.join(machines)}). Each recipe trains the budget in fp32 "
            "and on the fast path, one after the other (one seed each: read small differences as noise); the final "
            "weights are evaluated on the recipe's val split. The fast-path run is also evaluated with bf16 inference, "
            "and exported (`pixelwise export --format onnx`) and run by ONNX Runtime (fp32) and OpenVINO (bf16).\n\n"
            "| recipe | budget (s) | training / inference | steps in budget | val scores | s / image |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))
    replace_section(ROOT / "BENCHMARKS.md", "Fast path on trained models: equal-time training and exported accuracy",
                    body)
    print(body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--recipes", nargs="*", default=list(RECIPES), help="none: rewrite the table from the saved record")
    e = sub.add_parser("equal-time")
    e.add_argument("--budget", type=float, default=300)
    e.add_argument("--recipes", nargs="+", default=["unet_isbi2012_cpu", "fcn8s_camvid_cpu"])
    e.add_argument("--fast", type=json.loads, default={}, help='fast variant per recipe, e.g. {"fcn8s_camvid_cpu": '
                                                              '"bf16 + channels_last"} (default bf16)')
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fast_path_") as tmp:
        (steps if args.what == "steps" else equal_time)(args, Path(tmp))


if __name__ == "__main__":
    main()
