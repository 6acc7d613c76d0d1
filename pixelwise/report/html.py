"""One self-contained HTML page for one or more training runs: no scripts, no links out, every plot and
image embedded as a PNG data URI, so that it opens offline and can be mailed as one file.

`render(runs, title)` takes what `pixelwise.report.run.collect_run` gathers from a run folder (plain
dicts and PNG bytes); it reads no files. Semantic runs get per-class IoU and a confusion heatmap, instance
runs the COCO AP table; both get their training curves, and several runs a comparison table and curves
drawn over each other.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Sequence

MARKER = "<!-- pixelwise report -->"  # first line of every report: what may be rewritten
NOT_CURVES = {"step", "epoch", "time", "lr"}
AP_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right;font-size:.92em}th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%;
display:block;margin:6px 0}figure{margin:10px 0}figcaption{font-size:.9em;color:#555}pre{background:#f7f7f7;
padding:8px;overflow:auto;font-size:.85em;max-height:420px}.note{color:#666;font-size:.9em}
"""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_uri(data: bytes) -> str:
    """A data: URI of PNG (plots) or JPEG (validation images) bytes, told apart by their signature."""
    mime = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _img(data: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{image_uri(data)}" alt="{html.escape(alt)}">{cap}</figure>'


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) or v == -1.0 else f"{v:.4f}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _series(rows: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = []
    for r in rows:
        try:
            a, b = float(r[x]), float(r[key])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(a) and math.isfinite(b):
            pts.append((a, b))
    return [p[0] for p in pts], [p[1] for p in pts]


def curve_keys(rows: list[dict]) -> list[str]:
    """Columns of log.csv worth a plot: each loss term, the learning rate and each validation metric."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and v not in (None, "")]
    losses = [k for k in keys if k not in NOT_CURVES and not k.startswith("val_")]
    vals = [k for k in keys if k.startswith("val_") and k != "val_num_images"]
    return losses + (["lr"] if "lr" in keys else []) + vals


def curves_png(runs: Sequence[tuple[str, list[dict]]], x: str = "step") -> bytes | None:
    """A grid of small plots, one per curve key, each run a line (against `x`: step or time)."""
    keys: list[str] = []
    for _, rows in runs:
        keys += [k for k in curve_keys(rows) if k not in keys]
    if not keys:
        return None
    plt = _plt()
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rows in runs:
            xs, ys = _series(rows, key, x)
            if xs:  # a marker on validations, and on a curve of one point (a line of one point draws nothing)
                ax.plot(xs, ys, lw=1, marker="o" if key.startswith("val_") or len(xs) == 1 else None, ms=3, label=name)
        ax.set_title(key.removeprefix("val_") + (" (val)" if key.startswith("val_") else ""), fontsize=9)
        ax.set_xlabel("training seconds" if x == "time" else x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if len(runs) > 1:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / nrows))
    else:
        fig.tight_layout()
    return _figure_png(fig)


def seeds_png(runs: Sequence[tuple[str, Sequence[float], tuple[float, float] | None]],
              claims: Sequence[tuple[str, Sequence[float], tuple[float, float] | None]], metric: str) -> bytes:
    """Left: each run's score per seed (points) with its mean and interval; right: each claim's paired per-seed
    differences (better - worse) with their mean and interval, beside a line at 0."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.8 + 0.42 * max(len(runs), len(claims), 2)), squeeze=False)
    for ax, items, title in ((axes[0, 0], runs, f"{metric} per seed"),
                             (axes[0, 1], claims, "difference per seed (better - worse)")):
        for y, (label, values, interval) in enumerate(items):
            ax.plot(values, [y] * len(values), "o", ms=5, alpha=0.6, color="C0")
            if values:
                mean = sum(values) / len(values)
                err = None if interval is None else [[mean - interval[0]], [interval[1] - mean]]
                ax.errorbar([mean], [y], xerr=err, fmt="D", ms=6, color="C3", capsize=4)
        ax.set_yticks(range(len(items)), [label for label, _, _ in items], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    axes[0, 1].axvline(0, color="k", lw=0.8)
    fig.tight_layout()
    return _figure_png(fig)


def per_class_png(names: Sequence[str], ious: Sequence[Sequence[float | None]], labels: Sequence[str]) -> bytes:
    """Horizontal bars of IoU per class, one bar per run."""
    plt = _plt()
    k, n = len(names), len(ious)
    fig, ax = plt.subplots(figsize=(7, 0.32 * k * max(1, n) ** 0.6 + 1))
    h = 0.8 / n
    for j, (vals, label) in enumerate(zip(ious, labels)):
        ax.barh([i + j * h for i in range(k)], [v or 0.0 for v in vals], height=h, label=label)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(k)], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.grid(axis="x", alpha=0.3)
    if n > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


def confusion_png(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """The confusion matrix normalised by row (each ground-truth class sums to 1), with the percentages."""
    import numpy as np

    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(m)
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * k, 1.2 + 0.5 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 16:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _figure_png(fig)


def _summary_keys(runs: Sequence[dict]) -> list[str]:
    keys = []
    for r in runs:  # each run's task names the metrics worth a column (Task.summary_metrics)
        keys += [k for k in r.get("summary_metrics", ()) if isinstance(r["metrics"].get(k), float) and k not in keys]
    return keys


def _comparison(runs: Sequence[dict]) -> str:
    keys = _summary_keys(runs)
    rows = []
    for r in runs:
        s = r.get("train_state") or {}
        rows.append([r["name"], r["config"].get("model", {}).get("name"), r.get("params_millions"), s.get("step"),
                     s.get("train_seconds"), *[r["metrics"].get(k) for k in keys]])
    return _table(["run", "model", "params (M)", "steps", "training s", *keys], rows, left=2)


def _best(state: dict, config: dict) -> str | None:
    """The best validation as "miou 0.2330 at step 2": the metric named, the value rounded."""
    value = state.get("best_metric")
    if not isinstance(value, (int, float)):
        return None
    train = (config.get("train") if isinstance(config, dict) else None) or {}
    name = train.get("best_metric") or "best metric"
    return f"{name} {_fmt(float(value))} at step {state.get('best_step')}"


def _run_section(run: dict, index: int) -> str:
    m, name = run["metrics"], run["name"]
    parts = [f'<h2 id="run{index}">{html.escape(name)}</h2>', f'<p class="note">{html.escape(run["path"])}</p>']
    state, env = run.get("train_state"), run.get("environment")
    facts = []
    if state:
        facts += [("steps", state.get("step")), ("training seconds", state.get("train_seconds")),
                  ("stopped by", state.get("stopped")), ("best", _best(state, run["config"]))]
    facts += [("parameters (M)", run.get("params_millions")), ("validation images", m.get("num_images"))]
    parts.append(_table(["", "value"], [f for f in facts if f[1] is not None], left=2))
    if env:
        parts.append("<h3>Machine and versions</h3>" + _table(["", "value"], sorted(env.items()), left=2))
    else:
        parts.append('<p class="note">No environment.json in this run folder (it predates them).</p>')
    if run.get("curves"):
        parts.append("<h3>Training curves</h3>" + _img(run["curves"], f"training curves of {name}",
                                                       "from log.csv: each loss term, learning rate, validation metrics"))
    scalars = [(k, v) for k, v in m.items() if isinstance(v, float)]
    if scalars:
        parts.append(f"<h3>Final validation (step {m.get('step', 'n/a')})</h3>" + _table(["metric", "value"], scalars))
    names = m.get("class_names") or run.get("class_names")
    if m.get("per_class_iou") and names and len(names) == len(m["per_class_iou"]):
        rows = list(zip(names, m["per_class_iou"], m.get("per_class_acc") or [None] * len(names)))
        parts.append("<h3>IoU per class</h3>" + _table(["class", "IoU", "accuracy"], rows)
                     + _img(per_class_png(names, [m["per_class_iou"]], [name]), f"per-class IoU of {name}"))
    if m.get("confusion_matrix") and names and len(names) == len(m["confusion_matrix"]):
        parts.append("<h3>Confusion matrix</h3>" + _img(confusion_png(m["confusion_matrix"], names),
                                                        f"confusion matrix of {name}",
                                                        "rows: ground truth, columns: prediction; percent of each row"))
    if any(f"segm_{s}" in m for s in AP_STATS):
        rows = [[kind] + [m.get(f"{kind}_{s}") for s in AP_STATS] for kind in ("bbox", "segm")]
        parts.append("<h3>COCO AP</h3>" + _table(["", *AP_STATS], rows)
                     + '<p class="note">n/a: no ground truth of that size.</p>')
    if run.get("examples"):
        parts.append("<h3>Validation images</h3>" + "".join(_img(data, cap, cap) for cap, data in run["examples"]))
    elif run.get("examples_note"):
        parts.append(f'<p class="note">{html.escape(run["examples_note"])}</p>')
    parts.append("<h3>Resolved config</h3><pre>" + html.escape(run["config_text"]) + "</pre>")
    return "\n".join(parts)


def render(runs: Sequence[dict], title: str, *, summary_html: str = "") -> str:
    """The report page for `runs` (as collect_run returns them); `summary_html` goes first (reproduce's table)."""
    out = [MARKER, "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if summary_html:
        out.append(summary_html)
    if len(runs) > 1:
        out.append("<h2>Comparison</h2>" + _comparison(runs))
        series = [(r["name"], r["log"]) for r in runs]
        for x, what in (("step", "against steps"), ("time", "against training time")):
            png = curves_png(series, x)
            if png:
                out.append(_img(png, f"training curves {what}", f"every run's log.csv, {what}"))
        semantic = [r for r in runs if r["metrics"].get("per_class_iou")]
        names = semantic[0]["metrics"].get("class_names") if semantic else None
        same = [r for r in semantic if r["metrics"].get("class_names") == names]
        if names and len(same) > 1:
            out.append(_img(per_class_png(names, [r["metrics"]["per_class_iou"] for r in same], [r["name"] for r in same]),
                            "per-class IoU of every run", "IoU per class, every run"))
        out.append("<p>" + " &middot; ".join(f'<a href="#run{i}">{html.escape(r["name"])}</a>'
                                              for i, r in enumerate(runs)) + "</p>")
    out += [_run_section(r, i) for i, r in enumerate(runs)]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
