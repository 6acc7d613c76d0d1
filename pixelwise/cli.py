"""Command line: argument parsing only; everything else is built from the config and the engine."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import os

from pixelwise.config import Config, ConfigError, load_config
from pixelwise.registry import list_models, model_arguments, model_summary

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = "unet_isbi2012_cpu"


def resolve_config(name: str) -> Path:
    """A path, or the name of a bundled recipe (`unet_isbi2012_cpu` or `unet_isbi2012_cpu.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if bundled.is_file():
        return bundled
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config {name!r} is neither a file nor a bundled recipe. Bundled: {', '.join(known)}")


def _load(args) -> Config:
    cfg = load_config(resolve_config(args.config), args.override)
    if getattr(args, "data_root", None):
        cfg.data.root = args.data_root
    if getattr(args, "output_dir", None):
        cfg.output_dir = args.output_dir
    return cfg


def _model_and_device(cfg: Config, checkpoint: str):
    from pixelwise.engine.checkpoint import load_checkpoint, load_model_weights
    from pixelwise.engine.distributed import resolve_device
    from pixelwise.engine.trainer import build_model

    device = resolve_device(cfg.train.device)
    model = build_model(cfg, pretrained=False).to(device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    load_model_weights(model, ckpt, checkpoint)
    return model.eval(), device, ckpt


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"  {k:>24s}: {v:.4f}")


def cmd_train(args) -> int:
    from pixelwise.engine.trainer import train

    cfg = _load(args)
    state = train(cfg, resume=args.resume)
    out = Path(cfg.output_dir)
    if state.stopped == "signal":
        print(f"\ninterrupted at step {state.step}; checkpoint saved to {out / 'last.pt'}\n"
              f"resume with: pixelwise train {args.config} --resume {out / 'last.pt'}", file=sys.stderr)
        return 130
    best = f"{cfg.train.best_metric}={state.best_metric:.4f} at step {state.best_step}" if state.best_metric is not None else "n/a"
    why = {"early_stop": f" (stopped early: no better {cfg.train.best_metric} in {cfg.train.patience} validations)",
           "time_limit": f" (time limit of {cfg.train.time_limit:g} s reached)" if cfg.train.time_limit else ""}
    print(f"trained {state.step} steps{why.get(state.stopped, '')}; best {best}; run folder: {out}")
    return 0


def cmd_eval(args) -> int:
    from pixelwise.data import build_dataset
    from pixelwise.data.transforms import build_transforms
    from pixelwise.engine.evaluator import evaluate

    cfg = _load(args)
    model, device, _ = _model_and_device(cfg, args.checkpoint)
    ds = build_dataset(cfg.data, args.split)
    ds.transforms = build_transforms(cfg.data, train=False, ignore_index=getattr(ds, "ignore_index", None))
    metrics = evaluate(model, ds, cfg, device)
    metrics = {"checkpoint": str(args.checkpoint), "split": args.split, "dataset": cfg.data.dataset, **metrics}
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(f"{cfg.data.dataset} {args.split}: {metrics['num_images']} images")
    _print_metrics(metrics)
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from pixelwise.data import INSTANCE_DATASETS, dataset_meta
    from pixelwise.engine.evaluator import make_predictor
    from pixelwise.report.predictions import expand_inputs, predict_instances_to_folder, predict_to_folder

    cfg = _load(args)
    paths = expand_inputs(args.inputs)
    model, device, ckpt = _model_and_device(cfg, args.checkpoint)
    meta = dataset_meta(cfg.data)
    if cfg.data.dataset in INSTANCE_DATASETS:
        names = ckpt.get("class_names") or meta["class_names"]
        written = predict_instances_to_folder(model, paths, args.out, device, class_names=names,
                                              score_threshold=cfg.infer.score_threshold)
        print(f"wrote {len(written)} predictions (.json with boxes, scores and RLE masks + _instances.png + "
              f"_overlay.png) to {args.out}")
        return 0
    written = predict_to_folder(
        make_predictor(model, cfg, device), paths, args.out, in_channels=meta["in_channels"],
        num_classes=cfg.model.num_classes, mean=cfg.data.mean, std=cfg.data.std, palette=meta["palette"],
        threshold=cfg.infer.threshold, save_probs=cfg.infer.save_probs)
    print(f"wrote {len(written)} predictions (index PNG + _overlay.png{' + _probs.npy' if cfg.infer.save_probs else ''}) to {args.out}")
    return 0


def cmd_models(args) -> int:
    if args.name:
        print(f"{args.name}: {model_summary(args.name)}")
        for k, v in model_arguments(args.name).items():
            print(f"  {k} = {v!r}")
        return 0
    for name in list_models():
        print(f"{name:24s} {model_summary(name)}")
    return 0


def cmd_demo(args) -> int:
    from pixelwise.report.demo import run_demo

    cfg = load_config(resolve_config(DEMO_CONFIG), args.override)
    if args.data_root:
        cfg.data.root = args.data_root
    cfg.output_dir = args.out
    run_demo(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixelwise", description=__doc__.splitlines()[0].replace("Command line: ", "pixelwise: "))
    p.add_argument("--version", action="version", version=f"pixelwise {__import__('pixelwise').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, config=True):
        if config:
            sp.add_argument("config", metavar="CONFIG", help="recipe YAML file, or a bundled recipe name (see configs/)")
        sp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. -o train.lr=1e-3 -o model.args.base_width=32")
        sp.add_argument("--data-root", help="folder holding the datasets (else $PIXELWISE_DATA, else ~/.cache/pixelwise/data)")

    sp = sub.add_parser("train", help="train a model from a recipe", description=(
        "Train a model as the recipe says. Writes config.yaml, log.csv, tensorboard/, last.pt and best.pt "
        "to output_dir. Ctrl-C or SIGTERM saves last.pt before exiting; --resume continues exactly."))
    common(sp)
    sp.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (last.pt) exactly where it stopped")
    sp.add_argument("--output-dir", help="run folder (overrides output_dir)")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("eval", help="evaluate a checkpoint and write metrics.json", description=(
        "Evaluate a checkpoint on the validation split: pixel accuracy, mean accuracy, mean IoU, "
        "frequency-weighted IoU (FCN section 5), per-class IoU and Dice; on ISBI 2012 also the challenge's "
        "adapted Rand error, variation of information and pixel error. Mask R-CNN recipes: COCO box and mask AP "
        "(bbox_AP, segm_AP, AP50, AP75, APs/m/l, AR). Writes JSON."))
    common(sp)
    sp.add_argument("--checkpoint", required=True, metavar="CKPT")
    sp.add_argument("--split", default="val", choices=["train", "val"], help="which split of the recipe (default val)")
    sp.add_argument("--out", help="metrics file (default OUTPUT_DIR/metrics.json)")
    sp.add_argument("--output-dir", help=argparse.SUPPRESS)
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("predict", help="segment images and write index PNGs and overlays", description=(
        "Segment image files (or folders of images) with a checkpoint: writes <name>.png (class indices with a "
        "palette), <name>_overlay.png and, with -o infer.save_probs=true, <name>_probs.npy. Large images are "
        "tiled with -o infer.tile=SIZE; -o infer.tta=true averages flips and rotations. Mask R-CNN recipes write "
        "<name>.json (every detection: label, class, score, box, COCO RLE mask), <name>_instances.png (16-bit ids of "
        "the detections scoring at least infer.score_threshold) and <name>_overlay.png."))
    common(sp)
    sp.add_argument("--checkpoint", required=True, metavar="CKPT")
    sp.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files or folders")
    sp.add_argument("--out", required=True, metavar="DIR", help="output folder")
    sp.add_argument("--output-dir", help=argparse.SUPPRESS)
    sp.set_defaults(fn=cmd_predict)

    sp = sub.add_parser("models", help="list registered models, or show one model's arguments",
                        description="List the registered models; with a NAME, show the builder's arguments and defaults.")
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.set_defaults(fn=cmd_models)

    sp = sub.add_parser("demo", help="train, evaluate and predict a U-Net on ISBI 2012 on the CPU (about 10 min)",
                        description=(f"Train the CPU recipe configs/{DEMO_CONFIG}.yaml on ISBI 2012 slices 0-24, evaluate "
                                     "on slices 25-29, predict them, and write a run folder with metrics, overlays and "
                                     "curves."))
    common(sp, config=False)
    sp.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default runs/demo)")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from pixelwise.data.io import DataError
    from pixelwise.data.paths import DatasetNotFoundError
    from pixelwise.engine.checkpoint import CheckpointError
    from pixelwise.engine.trainer import TrainingError
    from pixelwise.models.weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, DatasetNotFoundError, CheckpointError, TrainingError, WeightsError,
            ValueError) as e:
        if os.environ.get("PIXELWISE_DEBUG"):
            raise
        print(f"pixelwise {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from pixelwise.engine.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
