"""`pixelwise report`: what a run folder holds, gathered for pixelwise.report.html, and the page written.

A run folder is what `pixelwise train` writes: config.yaml, log.csv, val_metrics.json (the last
validation), train_state.json, environment.json and last.pt / best.pt. The validation images are
predicted again from last.pt (the weights val_metrics.json scored) when the dataset can be found.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from pixelwise.engine.tasks import task_class
from pixelwise.errors import DataError, OutputError, PixelwiseError
from pixelwise.files import write_text
from pixelwise.registry import model_task
from pixelwise.report.html import MARKER, curves_png, render

__all__ = ["collect_run", "write_report"]


def _json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"run file {str(path)!r} is not readable JSON ({e})") from None


def _log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"run file {str(path)!r} is not a readable CSV log ({e})") from None


def _jpeg(picture) -> bytes:
    """Validation images as JPEG (quality 90): the report of maskrcnn-table2's seven runs took 15 MB instead of 39."""
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def collect_run(run_dir, *, data_root: str | None = None, examples: int = 2, device=None, name: str | None = None) -> dict:
    """Everything the report shows of one run folder (see the module docstring)."""
    import yaml

    folder = Path(run_dir)
    if not (folder / "config.yaml").is_file():
        raise DataError(f"{str(folder)!r} is not a run folder: it has no config.yaml (expected the output_dir of "
                        "`pixelwise train`)")
    try:
        config_text = (folder / "config.yaml").read_text(encoding="utf-8")
        config = yaml.safe_load(config_text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = " ".join(str(e).split())[:300]
        raise DataError(f"run file {str(folder / 'config.yaml')!r} is not a readable YAML config ({why}); expected "
                        "the config.yaml `pixelwise train` writes") from None
    if not isinstance(config, dict):
        raise DataError(f"run file {str(folder / 'config.yaml')!r} holds a {type(config).__name__}, not a config "
                        "(a mapping of output_dir, model, data, train, infer)")
    metrics = _json(folder / "val_metrics.json") or _json(folder / "metrics.json") or {}
    log = _log(folder / "log.csv")
    name = name or folder.name
    run = {"name": name, "path": str(folder.resolve()), "config": config, "config_text": config_text,
           "metrics": metrics, "log": log, "train_state": _json(folder / "train_state.json"),
           "environment": _json(folder / "environment.json"), "curves": curves_png([(name, log)]) if log else None,
           "examples": [], "examples_note": None, "summary_metrics": _summary_metrics(config)}
    checkpoint = folder / "last.pt" if (folder / "last.pt").is_file() else folder / "best.pt"
    if not checkpoint.is_file():
        run["examples_note"] = f"No last.pt or best.pt in {folder}: no validation images shown."
        return run
    from pixelwise.engine.run import build_datasets
    from pixelwise.inference import build_inference

    try:
        inference = build_inference(checkpoint, device=device, overrides=[f"data.root={data_root}"] if data_root else [])
        run["params_millions"] = round(sum(p.numel() for p in inference.model.parameters()) / 1e6, 3)
        run["class_names"] = inference.meta.get("class_names")
        if examples and metrics:
            val = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
            run["examples"] = [(caption, _jpeg(picture)) for caption, picture in
                               inference.task.report_examples(inference.model, val, inference.device, metrics, examples)]
    except PixelwiseError as e:  # the page still shows the rest; it says why the images are missing
        run["examples_note"] = f"Validation images not shown: {e}"
    return run


def _summary_metrics(config: dict) -> tuple[str, ...]:
    """The metrics of the comparison table for a run: its task's (Task.summary_metrics), by its model; none for a
    model this version does not know."""
    try:
        return task_class(model_task(str((config.get("model") or {}).get("name")))).summary_metrics
    except PixelwiseError:
        return ()


def write_report(run_dirs: Sequence, out=None, *, data_root: str | None = None, title: str | None = None,
                 summary_html: str = "", examples: int = 2, device=None, names: Sequence[str] | None = None) -> Path:
    """Write the report of `run_dirs` to `out` (default RUN_DIR/report.html for one run; required for several).

    `out` is written only if it is new or an earlier pixelwise report: never over another file.
    """
    if not run_dirs:
        raise OutputError("pixelwise report needs at least one RUN_DIR")
    if out is None and len(run_dirs) > 1:
        raise OutputError(f"--out FILE.html is needed to compare {len(run_dirs)} runs in one report")
    out = Path(run_dirs[0]) / "report.html" if out is None else Path(out)
    check_report_path(out)
    runs = [collect_run(d, data_root=data_root, examples=examples, device=device,
                        name=names[i] if names else None) for i, d in enumerate(run_dirs)]
    title = title or (f"pixelwise report: {_describe(runs[0])}" if len(runs) == 1
                      else f"pixelwise report: {len(runs)} runs compared")
    write_text(out, render(runs, title, summary_html=summary_html), what="report")
    return out


def _describe(run: dict) -> str:
    """"unet on isbi2012, folder runs/x" (the folder named once, whatever it is called)."""
    model = (run["config"].get("model") or {}).get("name") or "a model"
    data = (run["config"].get("data") or {}).get("dataset")
    return f"{model}{f' on {data}' if data else ''}, folder {run['name']}"


def check_report_path(out: Path) -> None:
    if out.suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"--out {str(out)!r}: expected a .html file")
    if out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a folder; expected a .html file")
    if out.exists():
        with out.open("rb") as f:
            head = f.read(len(MARKER))
        if head.decode("utf-8", "replace") != MARKER:
            raise OutputError(f"--out {str(out)!r} exists and is not a pixelwise report; it is left as it is. "
                              "Choose a new file name")
