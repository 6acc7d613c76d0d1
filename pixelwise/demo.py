"""`pixelwise demo`: train the CPU U-Net recipe on ISBI 2012, evaluate, predict, plot, explain."""
from __future__ import annotations

import time
from pathlib import Path

from pixelwise.config import Config
from pixelwise.errors import OutputError
from pixelwise.engine.run import build_datasets, build_inference
from pixelwise.engine.trainer import train
from pixelwise.files import write_json
from pixelwise.report.predictions import predict_to_folder
from pixelwise.report.visualize import plot_curves


def _earlier_demo(out: Path, cfg: Config) -> bool:
    """True when `out` holds a run of this very demo (same config), which running the demo again replaces.
    Anything else in `out` is refused, by train() or here."""
    import yaml

    from pixelwise.config import to_dict
    from pixelwise.engine.trainer import RUN_FILES

    found = [n for n in (*RUN_FILES, "predictions") if (out / n).exists() or (out / n).is_symlink()]
    if not found:
        return False
    try:
        same = yaml.safe_load((out / "config.yaml").read_text()) == to_dict(cfg)
    except (OSError, yaml.YAMLError):
        same = False
    if not same:
        raise OutputError(f"demo folder {str(out)!r} holds files that are not an earlier run of this demo "
                          f"({', '.join(found)}); they are left as they are. Choose another --out")
    return True


def run_demo(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    t0 = time.monotonic()
    print(f"pixelwise demo: U-Net ({cfg.model.name}, {cfg.model.args}) on ISBI 2012 slices {cfg.data.train_split}, "
          f"validating on {cfg.data.val_split}; run folder {out}")
    state = train(cfg, overwrite=_earlier_demo(out, cfg))
    best = out / "best.pt"
    inference = build_inference(best, cfg=cfg)
    val_ds = build_datasets(cfg, inference.model, splits=("val",))["val"]
    metrics = inference.task.evaluate(inference.model, val_ds, inference.device)
    write_json(out / "metrics.json", {"checkpoint": str(best), "split": cfg.data.val_split, **metrics}, what="metrics file")
    meta = inference.meta
    predict_to_folder(inference.predictor, val_ds.image_paths, out / "predictions", palette=meta["palette"],
                      class_names=meta["class_names"], note=meta["label_note"])
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
                         pixelwise predict unet_isbi2012_cpu --checkpoint {best} IMAGES... --out DIR
""")
    return metrics
