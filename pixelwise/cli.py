"""Command line: argument parsing only; everything else is built from the config and the engine.

Imports here are light (no torch) until a command runs, so `pixelwise --help` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

from pixelwise.config import CONFIG_DIR, Config, ConfigError, bundled_recipes, load_config, resolve_config
from pixelwise.deploy import runtimes
from pixelwise.errors import OutputError, PixelwiseError

DEMO_CONFIG = "unet_isbi2012_cpu"

DESCRIPTION = """\
pixelwise trains, evaluates and applies the classic fully convolutional segmentation networks:
FCN-32s/16s/8s, U-Net, FC-DenseNet 56/67/103 and Mask R-CNN, each as its paper describes it.
A run is described by a recipe (a YAML config); `pixelwise recipes` lists the bundled ones."""

EPILOG = """\
examples:
  pixelwise demo                                    train, evaluate and predict a U-Net on ISBI 2012 (CPU, ~10 min)
  pixelwise recipes                                 the bundled recipes
  pixelwise train unet_isbi2012_cpu --data-root ../shared/data
  pixelwise train --resume runs/unet_isbi2012_cpu/last.pt
  pixelwise eval --checkpoint runs/unet_isbi2012_cpu/best.pt
  pixelwise predict --checkpoint runs/unet_isbi2012_cpu/best.pt IMAGES... --out DIR
  pixelwise crf-search --checkpoint runs/fcn8s_camvid_cpu/best.pt   the CRF's parameters for this model
  pixelwise models                                  the registered networks
  pixelwise report runs/a runs/b --out compare.html one offline HTML page comparing runs
  pixelwise reproduce --list                        the papers' ablations, re-run with one command

Every command has --help. Errors you can fix are printed in one line (exit code 2); --debug shows
the traceback as well."""


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _say(*args, **kwargs) -> None:
    """Print on the main process only (under torchrun every rank runs the command)."""
    if _is_main():
        print(*args, **kwargs)


def _apply_cli(cfg: Config, args) -> Config:
    if getattr(args, "data_root", None):
        cfg.data.root = args.data_root
    if getattr(args, "output_dir", None):
        cfg.output_dir = args.output_dir
    return cfg


def _load(args) -> Config:
    return _apply_cli(load_config(resolve_config(args.config), args.override), args)


def _config_of_checkpoint(path: str, overrides: list[str]) -> Config:
    """The config a checkpoint was trained with, plus overrides (for `train --resume CKPT` alone)."""
    from pixelwise.engine.checkpoint import load_checkpoint
    from pixelwise.inference import config_of_checkpoint

    # Mapped, not read: train() reads the checkpoint itself, once.
    return config_of_checkpoint(load_checkpoint(path, mmap=True), path, overrides)


def _inference(args):
    """Model, task and predictor of --checkpoint: with its own config, or with CONFIG's (checked against it)."""
    from pixelwise.inference import build_inference

    if args.config is None:
        inference = build_inference(args.checkpoint, overrides=args.override, runtime=args.runtime)
        _apply_cli(inference.cfg, args)
        return inference
    return build_inference(args.checkpoint, cfg=_load(args), runtime=args.runtime)


def _inputs_of(args) -> list[Path]:
    """The protected input files: the checkpoint and the recipe file, if given."""
    files = [Path(args.checkpoint)]
    if args.config is not None:
        files.append(resolve_config(args.config))
    return files


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"  {k:>24s}: {v:.4f}")
    names, ious = metrics.get("class_names"), metrics.get("per_class_iou")
    if names and ious and len(names) == len(ious):
        print("  IoU per class: " + ", ".join(f"{n} {'n/a' if v is None else f'{v:.3f}'}" for n, v in zip(names, ious)))


def cmd_train(args) -> int:
    from pixelwise.engine.trainer import train

    if args.config is None and not args.resume:
        raise ConfigError("pixelwise train needs a CONFIG (a recipe file or name; see `pixelwise recipes`), or "
                          "--resume CKPT to continue a run with the config stored in its checkpoint")
    cfg = _load(args) if args.config else _apply_cli(_config_of_checkpoint(args.resume, args.override), args)
    out = Path(cfg.output_dir)
    if args.config and not args.resume and resolve_config(args.config).resolve() == (out / "config.yaml").resolve():
        raise OutputError(f"CONFIG {args.config!r} is the run folder's own config.yaml, which a new run rewrites; "
                          "copy it elsewhere, or set another --output-dir")
    state = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if state.stopped == "signal" or state.interrupted:  # interrupted: the signal came in the final validation
        if _is_main():
            print(f"\ninterrupted at step {state.step}; checkpoint saved to {out / 'last.pt'}\n"
                  f"resume with: pixelwise train --resume {out / 'last.pt'}", file=sys.stderr)
        return 130
    metric = cfg.train.best_metric
    best = f"{metric}={state.best_metric:.4f} at step {state.best_step}" if state.best_metric is not None else "n/a"
    why = {"early_stop": f" (stopped early: no better {metric} in {cfg.train.patience} validations)",
           "time_limit": f" (time limit of {cfg.train.time_limit:g} s reached)" if cfg.train.time_limit else ""}
    _say(f"trained {state.step} steps{why.get(state.stopped, '')}; best {best}; run folder: {out}")
    if state.metrics and _is_main():
        print(f"final validation (step {state.step}):")
        _print_metrics(state.metrics)
    if not args.no_report and _is_main():
        from pixelwise.report.run import write_report

        try:
            print(f"wrote {write_report([out], data_root=args.data_root)}")
        except PixelwiseError as e:  # the run itself is saved; say why its page is missing
            print(f"pixelwise train: warning: no report written: {' '.join(str(e).split())}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from pixelwise.report.run import write_report

    print(f"wrote {write_report(args.runs, args.out, data_root=args.data_root, examples=args.examples)}")
    return 0


def cmd_reproduce(args) -> int:
    from pixelwise.reproduce import SEEDS, listing, reproduce, reproduce_all, summary_markdown

    args.seeds = SEEDS if args.seeds is None else args.seeds
    if args.all:
        if args.name or args.list:
            raise ConfigError("pixelwise reproduce --all runs every experiment: give no NAME and no --list with it")
        page = reproduce_all(out=args.out, budget=args.budget, seeds=args.seeds, overrides=args.override,
                             data_root=args.data_root)
        print(f"wrote {page}")
        return 0
    if args.list or not args.name:
        if not args.list:
            raise ConfigError("pixelwise reproduce needs an experiment NAME, or --list to see them")
        print(listing())
        return 0
    summary = reproduce(args.name, out=args.out, budget=args.budget, seeds=args.seeds, overrides=args.override,
                        data_root=args.data_root)
    print(summary_markdown(summary))
    return 0


def cmd_eval(args) -> int:
    from pixelwise.data import split_spec
    from pixelwise.engine.run import build_datasets
    from pixelwise.files import ensure_dir, write_json

    out = Path(args.out) if args.out else None
    if out is not None:
        _check_metrics_file(out, _inputs_of(args))
    inference = _inference(args)
    cfg = inference.cfg
    if out is None:
        out = Path(cfg.output_dir) / "metrics.json"
        _check_metrics_file(out, _inputs_of(args))
    ensure_dir(out.parent, what="folder of --out")  # before the evaluation, not after it
    ds = build_datasets(cfg, inference.model, splits=(args.split,))[args.split]
    metrics = inference.task.evaluate(inference.model, ds, inference.device)
    split = split_spec(cfg.data, args.split)
    metrics = {"checkpoint": str(args.checkpoint), "split": split, "dataset": cfg.data.dataset, **metrics}
    write_json(out, metrics, what="metrics file")
    role = f" (the recipe's {args.split} split)" if split != args.split else ""
    print(f"{cfg.data.dataset} {split}{role}: {metrics['num_images']} images")
    _print_metrics(metrics)
    print(f"wrote {out}")
    return 0


def _check_metrics_file(out: Path, inputs: list[Path]) -> None:
    """--out may be a new file or an earlier metrics file of `pixelwise eval`, nothing else."""
    from pixelwise.files import same_file

    if any(same_file(out, p) for p in inputs):
        raise OutputError(f"--out {str(out)!r} is one of the inputs; choose another metrics file")
    if out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a folder; expected the path of the metrics file to write")
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not _is_metrics_file(out):
            raise OutputError(f"--out {str(out)!r} exists and is not a metrics file written by pixelwise eval; it is "
                              "left as it is. Choose a new file name")


def _is_metrics_file(path: Path) -> bool:
    import json

    try:
        with path.open("rb") as f:
            value = json.loads(f.read(1 << 26))
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and {"checkpoint", "split"} <= set(value)


def _split_predict_arguments(args) -> None:
    """`predict [CONFIG] --checkpoint CKPT INPUTS...`: the first positional is the CONFIG when it is a recipe
    (a .yaml / .yml file or a bundled recipe name) rather than an image or a folder of images."""
    first = args.inputs[0]
    path = Path(first)
    recipe = path.suffix in (".yaml", ".yml") or (not path.exists() and first in {p.stem for p in bundled_recipes()})
    args.config = first if recipe else None
    args.inputs = args.inputs[1:] if recipe else args.inputs
    if not args.inputs:
        raise ConfigError("pixelwise predict needs INPUTS: image files or folders after the CONFIG")


def cmd_predict(args) -> int:
    from pixelwise.output.predictions import expand_inputs

    _split_predict_arguments(args)
    paths = expand_inputs(args.inputs)
    inference = _inference(args)
    written, what = inference.task.write_predictions(inference.predictor, paths, args.out, meta=inference.meta,
                                                     protected=_inputs_of(args))
    print(f"wrote {len(written)} predictions ({what}) to {args.out}")
    return 0


def cmd_export(args) -> int:
    from pixelwise.export import export

    report = export(args.checkpoint, args.format, args.out, image=args.image, overrides=args.override,
                    int8=args.int8, calibration=args.calibration)
    print(f"checked with {report['runtime']} on {report['image']}: {report['summary']}")
    for f in report["files"]:
        print(f"wrote {f}")
    return 0


def cmd_serve(args) -> int:
    import os

    from pixelwise.serve import serve

    serve(args.checkpoint, runtime=args.runtime, overrides=args.override, host=args.host, port=args.port,
          workers=args.workers, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
          api_key=args.api_key or os.environ.get("PIXELWISE_API_KEY"), max_bytes=args.max_bytes,
          max_pixels=args.max_pixels, trust=args.trust_checkpoint)
    return 0


def cmd_data_check(args) -> int:
    from pixelwise.data import DataError, list_datasets
    from pixelwise.data.check import check_split
    from pixelwise.data.paths import expected_layout

    target = args.target
    if target in list_datasets() and not Path(target).is_file():
        cfg = _apply_cli(load_config(None, [f"data.dataset={target}", *args.override]), args)
    else:
        cfg = _load(argparse.Namespace(config=target, override=args.override, data_root=args.data_root))
    try:
        report = check_split(cfg, args.split)
    except DataError as e:  # the folder is not what the dataset expects (a missing folder already says the layout)
        layout = expected_layout(cfg.data.dataset)
        raise DataError(f"{' '.join(str(e).split())}" + (f". Expected layout inside the dataset folder: {layout}"
                                                          if layout else "")) from None
    print("\n".join(report.lines()))
    return 2 if report.problems else 0


def cmd_crf_search(args) -> int:
    import json

    from pixelwise.crf_search import crf_search, write_search
    from pixelwise.files import same_file

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "crf_search.json"
    if same_file(out, Path(args.checkpoint)):
        raise OutputError(f"--out {str(out)!r} is the checkpoint itself")
    overrides = [*args.override, *([f"data.root={args.data_root}"] if args.data_root else [])]
    result = crf_search(args.checkpoint, images=args.images, iterations=args.iterations, overrides=overrides)
    write_search(result, out)
    print(f"mean IoU on {result['images']} validation images: {result['miou_without_crf']:.4f} without CRF, "
          f"{result['miou_best']:.4f} with the best of {len(result['tried'])} settings")
    if result["best"] is None:
        print("no setting beats the model alone: leave infer.crf off for this model")
    else:
        print(f'use: -o "infer.crf={json.dumps(result["best"])}"')
    print(f"wrote {out}")
    return 0


def cmd_models(args) -> int:
    from pixelwise.registry import list_models, model_arguments, model_summary

    if args.name:
        print(f"{args.name}: {model_summary(args.name)}")
        for k, v in model_arguments(args.name).items():
            print(f"  {k} = {v!r}")
        return 0
    for name in list_models():
        print(f"{name:24s} {model_summary(name)}")
    print("\n`pixelwise models NAME` shows a model's arguments; `pixelwise recipes` lists the bundled recipes.")
    return 0


def recipe_summary(path: Path) -> str:
    """The first line of a recipe's header comment."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def cmd_recipes(args) -> int:
    for path in bundled_recipes():
        print(f"{path.stem:30s} {recipe_summary(path)}")
    print(f"\nUse a name as CONFIG (pixelwise train {DEMO_CONFIG}); the files are in {CONFIG_DIR}.")
    return 0


def cmd_demo(args) -> int:
    from pixelwise.demo import demo_config, run_demo

    cfg, note = demo_config(resolve_config(DEMO_CONFIG), args.override, data_root=args.data_root, out=args.out,
                            sample=args.sample)
    run_demo(cfg, note=note)
    return 0


OVERRIDE_HELP = "override any config field, e.g. -o train.lr=1e-3 -o model.args.base_width=32"
DATA_ROOT_HELP = "folder holding the datasets (else $PIXELWISE_DATA, else ~/.cache/pixelwise/data)"


def _join(items: list[str], last: str = "or") -> str:
    """'a, b or c'."""
    return f"{', '.join(items[:-1])} {last} {items[-1]}" if len(items) > 1 else "".join(items)


def _suffixes() -> list[str]:
    """The file suffixes of the export formats."""
    return [f.suffix for f in runtimes.FORMATS.values()]


def _deploy_runtimes() -> list[str]:
    """The runtimes that need the deployment extra."""
    return [name for name, r in runtimes.RUNTIMES.items() if r.packages]


def _runtime_files(name: str, runtime) -> str:
    """A runtime and what it runs, e.g. 'torch (checkpoints, .pt2)'."""
    files = ["checkpoints"] if runtimes.CHECKPOINT in runtime.formats else []
    files += [f.suffix for f in runtimes.FORMATS.values() if f.name in runtime.formats]
    return f"{name} ({', '.join(files)})" if files else name


def _runtime_help() -> str:
    """Help of --runtime: each runtime with the files it runs, its precisions beyond fp32 and the extra needed."""
    names = [_runtime_files(name, r) for name, r in runtimes.RUNTIMES.items()]
    text = f"what runs the model: {_join(names)}; default: the file's own. Tiling, TTA and outputs are the same"
    precisions = dict.fromkeys(p for r in runtimes.RUNTIMES.values() for p in r.precisions if p != "fp32")
    for p in precisions:
        titles = [r.title for r in runtimes.RUNTIMES.values() if p in r.precisions]
        text += f"; -o infer.precision={p} runs {_join(titles)} in {p}"
    extra = _deploy_runtimes()
    if extra:
        text += f". {_join(extra, 'and')} {'come' if len(extra) > 1 else 'comes'} with {runtimes.EXTRA}"
    return text


def _config_arg(sp, help: str) -> None:
    sp.add_argument("config", metavar="CONFIG", nargs="?", help=help)


def _overrides(sp, help: str = OVERRIDE_HELP) -> None:
    sp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=help)


def _data_root(sp, help: str = DATA_ROOT_HELP) -> None:
    sp.add_argument("--data-root", help=help)


def _hidden_debug(sp) -> None:
    """--debug after the command as well as before it."""
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _common(sp) -> None:
    """-o, --data-root and --debug."""
    _overrides(sp)
    _data_root(sp)
    _hidden_debug(sp)


def _checkpoint(sp, help: str | None = None) -> None:
    sp.add_argument("--checkpoint", required=True, metavar="CKPT", help=help or (
        "checkpoint to use: a run's best.pt (best validation score) or last.pt (latest step), or a model written by "
        f"pixelwise export ({', '.join(_suffixes())})"))


def _runtime(sp) -> None:
    sp.add_argument("--runtime", choices=tuple(runtimes.RUNTIMES), help=_runtime_help())


def _trust(sp) -> None:
    sp.add_argument("--trust-checkpoint", action="store_true", help=(
        "also read the checkpoint named by --checkpoint / --resume (that file only) when it holds pickled Python "
        "objects. Without it only tensors and plain values are read, since unpickling can run arbitrary code: use "
        "it only for files you made or trust (for example checkpoints of pixelwise 0.1 with extra objects)"))


def _train_parser(sub) -> None:
    sp = sub.add_parser("train", help="train a model from a recipe", description=(
        "Train a model as the recipe says. Writes config.yaml, log.csv, tensorboard/, last.pt and best.pt "
        "to output_dir (locked while the run goes on). Ctrl-C or SIGTERM saves last.pt before exiting, and so "
        "does an error; --resume continues exactly, with the config stored in the checkpoint."),
        epilog="bundled recipes: " + ", ".join(p.stem for p in bundled_recipes()))
    _config_arg(sp, "recipe YAML file or bundled recipe name; with --resume it may be left out")
    _common(sp)
    sp.add_argument("--resume", metavar="CKPT", help=(
        "continue from a run's last.pt exactly where it stopped; -o may change only settings that keep the run the "
        "same (max_steps, time_limit, lr, logging, device, infer.*)"))
    sp.add_argument("--output-dir", help="run folder (overrides output_dir)")
    sp.add_argument("--overwrite", action="store_true", help=(
        "start over in an output_dir that holds another run, replacing that run's files (config.yaml, log.csv, "
        "last.pt, best.pt, ...; it says which). Without it such a folder is refused"))
    sp.add_argument("--no-report", action="store_true", help="do not write OUTPUT_DIR/report.html at the end")
    _trust(sp)
    sp.set_defaults(fn=cmd_train)


def _eval_parser(sub) -> None:
    sp = sub.add_parser("eval", help="evaluate a checkpoint and write metrics.json", description=(
        "Evaluate a checkpoint on the validation split: pixel accuracy, mean accuracy, mean IoU, "
        "frequency-weighted IoU (FCN section 5), per-class IoU and Dice with class names; on ISBI 2012 also the "
        "challenge's adapted Rand error, variation of information and pixel error. Mask R-CNN recipes: COCO box and "
        "mask AP (bbox_AP, segm_AP, AP50, AP75, APs/m/l, AR). Writes JSON. The checkpoint holds the config it was "
        "trained with, so CONFIG may be left out; given, it must agree with the checkpoint on the model and the "
        "input normalisation."))
    _config_arg(sp, "recipe YAML file or bundled recipe name (default: the config stored in the checkpoint)")
    _common(sp)
    _checkpoint(sp)
    sp.add_argument("--split", default="val", metavar="SPLIT", help=(
        "train or val (the recipe's data.train_split / data.val_split), or any split of the dataset: test for "
        "CamVid and VOC lists, a slice list such as 25-29 for ISBI 2012 (default val)"))
    sp.add_argument("--out", help="metrics file (default OUTPUT_DIR/metrics.json)")
    sp.add_argument("--output-dir", help=argparse.SUPPRESS)
    _runtime(sp)
    _trust(sp)
    sp.set_defaults(fn=cmd_eval)


def _predict_parser(sub) -> None:
    sp = sub.add_parser("predict", help="segment images and write index PNGs and overlays",
                        usage="pixelwise predict [CONFIG] --checkpoint CKPT INPUTS... --out DIR [options]", description=(
        "Segment image files (or folders of images) with a checkpoint: writes <name>.png (class indices with a "
        "palette; classes.json says which), <name>_overlay.png and, with -o infer.save_probs=true, <name>_probs.npy. "
        "Names follow the inputs' paths relative to their common folder; no input is ever overwritten. Large images "
        "are tiled with -o infer.tile=SIZE; -o infer.tta=true averages flips and rotations (infer.tta=hflip: the "
        "mirror image only). Mask R-CNN recipes write "
        "<name>.json (every detection: label, class, score, box, COCO RLE mask), <name>_instances.png (16-bit ids of "
        "the detections scoring at least infer.score_threshold) and <name>_overlay.png (with class names and scores). "
        "CONFIG may be left out: the checkpoint holds the config it was trained with."))
    _common(sp)
    _checkpoint(sp)
    sp.add_argument("inputs", nargs="+", metavar="INPUTS", help=(
        "an optional recipe (a .yaml file or bundled recipe name; default: the checkpoint's own config), then image "
        "files or folders"))
    sp.add_argument("--out", required=True, metavar="DIR", help="output folder")
    sp.add_argument("--output-dir", help=argparse.SUPPRESS)
    _runtime(sp)
    _trust(sp)
    sp.set_defaults(fn=cmd_predict)


def _export_parser(sub) -> None:
    sp = sub.add_parser("export", help="export a checkpoint to ONNX, OpenVINO or torch.export, checked on a real image",
                        description=(
        "Write a checkpoint as an ONNX, OpenVINO (.xml + .bin) or torch.export (.pt2) model holding its config and "
        "class names. Semantic models are exported whole, input normalisation included (input float (N, C, H, W) in "
        "[0, 1], dynamic batch, height and width, the model's size rule kept); Mask R-CNN as its parts with weights "
        "(backbone, rpn_head, box_head, mask_head, res5 for C4; STEM.PART.SUFFIX beside --out), with resizing, "
        "anchors, NMS, RoI pooling and mask pasting in PyTorch. The exported model is then run on a real image beside "
        "PyTorch and nothing is written if they disagree. Use the file with eval / predict --checkpoint FILE "
        f"[--runtime {'|'.join(_deploy_runtimes())}]."))
    _checkpoint(sp, help="a run's best.pt or last.pt")
    sp.add_argument("--format", required=True, choices=tuple(runtimes.FORMATS), help="what to write")
    sp.add_argument("--out", required=True, metavar="FILE",
                    help=f"file to write ({_join(_suffixes())}); never overwritten")
    sp.add_argument("--image", metavar="FILE", help="image to check the export on (default: the recipe's first "
                                                    "validation image)")
    sp.add_argument("--int8", action="store_true",
                    help="quantize to int8 after training (static, calibrated; onnx: ONNX Runtime, openvino: nncf); "
                         "checked against PyTorch fp32 with a looser tolerance")
    sp.add_argument("--calibration", type=int, default=16, metavar="N",
                    help="training images to calibrate --int8 on (default 16)")
    _overrides(sp, help="override a field of the checkpoint's config, e.g. -o data.root=DIR")
    _trust(sp)
    sp.set_defaults(fn=cmd_export)


def _report_parser(sub) -> None:
    sp = sub.add_parser("report", help="write one self-contained HTML page of one or more run folders",
                        description=(
        "Write an HTML report of training runs that opens offline (plots and images embedded, no scripts): the "
        "resolved config, machine and versions, training curves from log.csv (each loss term, learning rate, "
        "validation metrics), per-class IoU and a confusion-matrix heatmap (semantic runs) or the COCO AP table "
        "(instance runs), and the best and worst validation images as image | ground truth | prediction (predicted "
        "again from last.pt when the dataset is found). Several RUN_DIRs are compared side by side: one table and "
        "their curves drawn over each other. `pixelwise train` writes OUTPUT_DIR/report.html at the end of a run."))
    sp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (a training's output_dir)")
    sp.add_argument("--out", metavar="FILE.html", help=(
        "page to write (default RUN_DIR/report.html for one run; needed for several); an existing file is replaced "
        "only if it is a pixelwise report"))
    sp.add_argument("--examples", type=int, default=2, metavar="N", help=(
        "best and worst N validation images (instance runs: the first 2N); 0 for none (default 2)"))
    _data_root(sp, help="folder holding the datasets (else the run's data.root, else $PIXELWISE_DATA)")
    _hidden_debug(sp)
    sp.set_defaults(fn=cmd_report)


def _reproduce_parser(sub) -> None:
    sp = sub.add_parser("reproduce", help="re-run a paper's ablation on the bundled data and summarise it",
                        description=(
        "Re-run one of the papers' ablations: a set of runs (a bundled recipe plus overrides), each trained for the "
        "same time budget on the fast path (bf16 + channels_last), scored by its final validation, and summarised in "
        "OUT/NAME/summary.md, summary.json and report.html: our figures beside the paper's, the spread over seeds, "
        "and whether the paper's direction held. Finished runs are skipped and an interrupted one resumes from its "
        "last.pt: run the same command again to continue. --list shows the experiments and their default budgets; "
        "--all runs every one and writes OUT/index.html, one page with every claim and its verdict."))
    sp.add_argument("name", nargs="?", metavar="NAME", help="experiment (see --list)")
    sp.add_argument("--list", action="store_true", help="list the experiments with their runs and default budgets")
    sp.add_argument("--all", action="store_true", help=(
        "every experiment of the papers' claims (not our own questions, which run by name), then OUT/index.html: all "
        "claims on one page"))
    sp.add_argument("--budget", type=float, metavar="SECONDS", help="training seconds per run (default: the "
                                                                    "experiment's; staged stages get their share)")
    sp.add_argument("--seeds", type=int, metavar="N",
                    help="seeds per run, paired across the runs of a claim (default 3: the least for an interval)")
    sp.add_argument("--out", default="reproduce", metavar="DIR", help="folder of the experiments (default reproduce)")
    _common(sp)  # -o applies to every run
    sp.set_defaults(fn=cmd_reproduce)


def _crf_search_parser(sub) -> None:
    sp = sub.add_parser("crf-search", help="choose infer.crf's parameters on held-out validation images",
                        description=(
        "Search the fully connected CRF's w1, theta_alpha and theta_beta (w2 = theta_gamma = 3), coarse to fine, "
        "as DeepLab did: the model predicts the first --images validation images once and every setting refines "
        "them (torch backend), scored by mean IoU. Writes every setting tried and the best infer.crf block as JSON, "
        "or says that no setting beats the model alone."))
    _common(sp)
    _checkpoint(sp, help="a run's best.pt or last.pt of a semantic model")
    sp.add_argument("--images", type=int, default=20, help="validation images to search on (default 20)")
    sp.add_argument("--iterations", type=int, default=5, help="mean-field iterations (default 5)")
    sp.add_argument("--out", metavar="FILE", help="result JSON (default crf_search.json beside the checkpoint)")
    _trust(sp)
    sp.set_defaults(fn=cmd_crf_search)


def _models_parser(sub) -> None:
    sp = sub.add_parser("models", help="list registered models, or show one model's arguments",
                        description="List the registered models; with a NAME, show the builder's arguments and defaults.")
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.set_defaults(fn=cmd_models)


def _recipes_parser(sub) -> None:
    sp = sub.add_parser("recipes", help="list the bundled recipes (names usable as CONFIG)",
                        description="List the recipes shipped with pixelwise, with the first line of each file's header.")
    sp.set_defaults(fn=cmd_recipes)


def _demo_parser(sub) -> None:
    sp = sub.add_parser("demo", help="train, evaluate and predict a U-Net on ISBI 2012 on the CPU (about 6 min)",
                        description=(f"Train the CPU recipe {DEMO_CONFIG} on ISBI 2012 slices 0-24, evaluate "
                                     "on slices 25-29, predict them, and write a run folder with metrics, overlays and "
                                     "curves. Where the dataset is not found, it runs on the small sample bundled "
                                     "with pixelwise (12 slices, about 4 min) and says so."))
    _common(sp)
    sp.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default runs/demo)")
    sp.add_argument("--sample", action="store_true", help=(
        "run on the small ISBI 2012 sample bundled with pixelwise even where the full dataset is found (it is used "
        "anyway when the full dataset is not found)"))
    sp.set_defaults(fn=cmd_demo)


def _serve_parser(sub) -> None:
    from pixelwise.serve import MAX_BYTES, MAX_PIXELS

    sp = sub.add_parser("serve", help="serve a checkpoint or exported model over HTTP (LitServe)", description=(
        "An HTTP server for a checkpoint or exported model: POST /predict with the image file's bytes as the body "
        "(or a multipart field 'image'), GET /health, GET /info. Predictions are those of pixelwise predict "
        "(preprocessing, tiling, TTA, thresholds, CRF). Needs the serving extra: pip install 'pixelwise[serve]'."))
    _checkpoint(sp)
    _runtime(sp)
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--workers", type=int, default=1, help="inference workers (processes), each with the model")
    sp.add_argument("--max-batch-size", type=int, default=1, help="requests predicted together (default 1)")
    sp.add_argument("--batch-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="how long a batch waits to fill (default 0)")
    sp.add_argument("--api-key", help="require this X-API-Key header (default: $PIXELWISE_API_KEY, else none)")
    sp.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"largest request body (default {MAX_BYTES})")
    sp.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"largest image (default {MAX_PIXELS} pixels)")
    _overrides(sp, help="an infer.* setting, e.g. -o infer.tile=256 -o infer.precision=bf16")
    _trust(sp)
    sp.set_defaults(fn=cmd_serve)


def _data_parser(sub) -> None:
    sp = sub.add_parser("data", help="check a dataset before a long training", description=(
        "pixelwise data check TARGET: read every sample of a split as training reads it (the same file reading "
        "and label checks, without random augmentation) and print the sample count, image sizes, channels, the "
        "class histogram, the samples without labels and every problem found, each naming its file. Exit code 2 "
        "when there are problems; a folder that does not match the dataset's layout is named with the layout "
        "expected."))
    actions = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="read every sample of a split and report what is there and wrong")
    check.add_argument("target", metavar="DATASET_OR_CONFIG", help=(
        "a registered dataset name (isbi2012, camvid, voc, coco, folder, ...) or a recipe YAML file / bundled "
        "recipe name (its data.* settings)"))
    check.add_argument("--split", default="train", metavar="SPLIT", help=(
        "train or val (the recipe's or the dataset's default splits), or any split of the dataset (default train)"))
    _common(check)
    check.set_defaults(fn=cmd_data_check)


_COMMAND_PARSERS = (_train_parser, _eval_parser, _predict_parser, _export_parser, _serve_parser, _crf_search_parser,
                    _report_parser, _reproduce_parser, _data_parser, _models_parser, _recipes_parser, _demo_parser)


def build_parser() -> argparse.ArgumentParser:
    """The `pixelwise` parser: global options and one subparser per command."""
    p = argparse.ArgumentParser(prog="pixelwise", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pixelwise {__import__('pixelwise').__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of errors too (or set PIXELWISE_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in _COMMAND_PARSERS:
        add_parser(sub)
    return p


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    from pixelwise.config import ConfigWarning

    if issubclass(category, ConfigWarning):
        return f"pixelwise: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes one run of positionals: `predict CONFIG --checkpoint CKPT INPUTS...` leaves the INPUTS over.
    if extra and args.command == "predict" and not any(a.startswith("-") for a in extra):
        args.inputs += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False) or bool(os.environ.get("PIXELWISE_DEBUG"))
    previous, warnings.formatwarning = warnings.formatwarning, _format_warning  # config warnings in one line
    try:
        trusted = [p for p in (getattr(args, "checkpoint", None), getattr(args, "resume", None)) if p]
        if getattr(args, "trust_checkpoint", False) and trusted:
            from pixelwise.files import trusting_pickles

            with trusting_pickles(*trusted):  # the file the user named, and no other
                return args.fn(args)
        return args.fn(args)
    except PixelwiseError as e:  # the user can fix these; anything else is a bug and keeps its traceback
        if debug:
            traceback.print_exc()
        if _is_main():
            print(f"pixelwise {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous  # main() may be called from Python: leave it as it was
        if "torch" in sys.modules:
            from pixelwise.engine.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
