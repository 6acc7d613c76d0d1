"""`pixelwise demo`: train the CPU U-Net recipe on ISBI 2012, evaluate, predict, plot, explain."""
from __future__ import annotations

import time
from pathlib import Path

from pixelwise.config import Config
from pixelwise.errors import OutputError
from pixelwise.engine.run import build_datasets
from pixelwise.inference import build_inference
from pixelwise.engine.trainer import RUN_FILES, train
from pixelwise.files import write_json
from pixelwise.output.predictions import predict_to_folder
from pixelwise.output.visualize import plot_curves


DEMO_MARK = ".pixelwise-demo"  # in a demo's run folder: running the demo again may replace that run


def _earlier_demo(out: Path) -> bool:
    """True when `out` holds an earlier run of the demo (its mark), which running the demo again replaces;
    False for a new folder. A folder holding anything else a demo writes is refused: it is not the demo's."""
    found = [n for n in (*RUN_FILES, "predictions") if (out / n).exists() or (out / n).is_symlink()]
    mark = out / DEMO_MARK
    if found and (mark.is_symlink() or not mark.is_file()):
        raise OutputError(f"demo folder {str(out)!r} holds files that are not an earlier run of pixelwise demo "
                          f"({', '.join(found)}); they are left as they are. Choose another --out")
    write_json(mark, {"written_by": "pixelwise demo"}, what="demo mark")
    return bool(found)


# The bundled sample (pixelwise/samples/isbi2012-sample): 8 training and 4 validation slices of 352 x 352, so a
# shorter training fits the demo in about 4 minutes on 2 cores.
SAMPLE_OVERRIDES = ("data.dataset=isbi2012-sample", "data.train_split=0-7", "data.val_split=25-28",
                    "train.time_limit=150", "train.val_every=50", "train.ckpt_every=50")
# What the demo gives on the full dataset (BENCHMARKS.md, "Runs anywhere"), told to users of the sample.
FULL_DATA = ("on the full dataset (25 training slices of 512 x 512, 1000 steps) this demo reaches an adapted Rand "
             "error of {rand} and a membrane IoU of {iou} in {minutes} min on 2 cores (BENCHMARKS.md, 'Runs anywhere')")
FULL_DATA_FIGURES = {"rand": "0.061", "iou": "0.680", "minutes": "5.1"}  # make demo, 2026-12-05, Xeon with AMX
GET_DATA = ("to run it on the full dataset, download train-volume.tif and train-labels.tif from "
            "https://imagej.net/events/isbi-2012-segmentation-challenge into DATA/isbi2012/ and pass --data-root DATA "
            "(or set $PIXELWISE_DATA)")


def demo_config(recipe: Path, overrides, *, data_root: str | None, out: str, sample: bool = False) -> tuple[Config, str | None]:
    """The demo's config, on the bundled sample (with a note saying so) when asked or when ISBI 2012 is not found."""
    from pixelwise.config import ConfigError, load_config
    from pixelwise.data.paths import dataset_dir
    from pixelwise.errors import DatasetNotFoundError
    from pixelwise.engine.tasks import build_task
    from pixelwise.metrics import ISBI_METRICS

    cfg = load_config(recipe, overrides)
    # The demo's summary explains the ISBI challenge scores, which only a model scored on ISBI 2012 reports.
    if not set(ISBI_METRICS) <= set(build_task(cfg).metric_names(cfg.data.dataset)):
        raise ConfigError(f"pixelwise demo trains a U-Net on ISBI 2012 (data.dataset={cfg.data.dataset!r}, "
                          f"model.name={cfg.model.name!r} given); use pixelwise train for other datasets and models")
    if data_root:
        cfg.data.root = data_root
    note = None
    if cfg.data.dataset == "isbi2012" and not sample:
        try:
            dataset_dir(cfg.data)
        except DatasetNotFoundError:
            note = f"ISBI 2012 was not found under {_where(cfg)}"
    elif sample or cfg.data.dataset == "isbi2012-sample":
        note = "--sample was given" if sample else "data.dataset=isbi2012-sample was given"
    if note is not None:
        cfg = load_config(recipe, [*SAMPLE_OVERRIDES, *overrides])
        note = (f"pixelwise demo: running on the small ISBI 2012 sample bundled with pixelwise (12 slices of "
                f"352 x 352; {note}), so the scores below are not ISBI 2012 scores: {FULL_DATA.format(**FULL_DATA_FIGURES)}; "
                f"{GET_DATA}.")
    cfg.output_dir = out
    return cfg, note


def _where(cfg: Config) -> str:
    from pixelwise.data.paths import resolve_root

    return repr(str(resolve_root(cfg.data.root) / "isbi2012"))


def run_demo(cfg: Config, note: str | None = None) -> dict:
    out = Path(cfg.output_dir)
    t0 = time.monotonic()
    if note:
        print(note)
    print(f"pixelwise demo: U-Net ({cfg.model.name}, {cfg.model.args}) on {cfg.data.dataset} slices "
          f"{cfg.data.train_split}, validating on {cfg.data.val_split}; run folder {out}")
    state = train(cfg, overwrite=_earlier_demo(out))
    best = out / "best.pt"
    inference = build_inference(best, cfg=cfg)
    val_ds = build_datasets(cfg, inference.model, splits=("val",))["val"]
    metrics = inference.task.evaluate(inference.model, val_ds, inference.device)
    write_json(out / "metrics.json", {"checkpoint": str(best), "split": cfg.data.val_split, **metrics}, what="metrics file")
    meta = inference.meta
    paths = getattr(val_ds, "image_paths", None)  # none when the slices are pages of the official TIFF volume
    pages = [] if paths else [(name, val_ds.image_array(i)) for i, name in enumerate(val_ds.names)]
    predict_to_folder(inference.predictor, paths or [], out / "predictions", palette=meta["palette"],
                      class_names=meta["class_names"], note=meta["label_note"], images=pages)
    plot_curves(out / "log.csv", out / "curves.png")
    minutes = (time.monotonic() - t0) / 60
    print(f"""
Done in {minutes:.1f} min ({state.step} training steps, best checkpoint from step {state.best_step}).
Results on slices {cfg.data.val_split}, held out from training (they also picked the best checkpoint);
membrane is the positive class, and Rand / VI score the cells after thinning membranes to 1 pixel:
  pixel error            {metrics['pixel_error']:.4f}   fraction of pixels labelled wrongly (lower is better)
  membrane IoU           {metrics['membrane_iou']:.4f}   overlap of predicted and true membrane (higher is better)
  adapted Rand error     {metrics['adapted_rand_error']:.4f}   ISBI 2012's main score on the cells the membranes
                                  enclose: 0 = every cell split exactly as in the labels (lower is better)
  variation of info.     {metrics['vi']:.4f}   split {metrics['vi_split']:.3f} + merge {metrics['vi_merge']:.3f} (lower is better)
  mean IoU (2 classes)   {metrics['miou']:.4f}
Wrote to {out}:
  metrics.json           all metrics, per-class IoU and Dice
  predictions/           index PNGs (1 = membrane; see classes.json) and *_overlay.png (membranes in colour)
  curves.png             training loss and validation scores against steps
  log.csv, tensorboard/  logs (tensorboard --logdir {out / 'tensorboard'})
  best.pt, last.pt       checkpoints; segment your own slices with
                         pixelwise predict --checkpoint {best} IMAGES... --out DIR
""")
    return metrics
