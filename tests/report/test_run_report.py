"""pixelwise report: one offline HTML page of run folders (engine.report + report.html)."""
import base64
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.report.run import write_report
from pixelwise.errors import DataError, OutputError
from pixelwise.report.html import MARKER
from conftest import require_dataset, tiny_fcn_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return tiny_fcn_run(base / "fcn8s"), tiny_fcn_run(base / "fcn32s", "model.name=fcn32s")


def images_of(page: str) -> list[Image.Image]:
    uris = re.findall(r'<img src="data:image/(?:png|jpeg);base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_semantic_run_folder_holds_what_the_report_needs(runs):
    run = runs[0]
    metrics = json.loads((run / "val_metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (11, 11) and matrix.sum() > 0
    # The matrix is the one the scores come from: its diagonal gives the pixel accuracy reported.
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["pixel_acc"])
    assert len(metrics["per_image_miou"]) == 4 and all(0 <= v <= 1 for v in metrics["per_image_miou"])
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time"]) for r in rows if r.get("time")]
    assert times and times == sorted(times) and times[-1] > 0  # training seconds, for curves against time
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"].startswith("2.") and env["cpu_count"] >= 1 and env["device"] == "cpu"


def test_report_of_one_semantic_run(runs):
    out = write_report([runs[0]])
    assert out == runs[0] / "report.html"
    page = out.read_text()
    assert page.startswith(MARKER)
    for text in ("Training curves", "IoU per class", "Confusion matrix", "Validation images", "Resolved config",
                 "Machine and versions", "sky", "bicyclist", "best:", "worst:", "fcn8s"):
        assert text in page, text
    pictures = images_of(page)
    assert len(pictures) >= 3 + 4  # curves, per-class bars, confusion heatmap, 2 best + 2 worst
    assert all(p.size[0] > 100 and p.size[1] > 100 for p in pictures)
    panel = max(pictures, key=lambda p: p.size[0] / p.size[1])  # image | truth | prediction side by side
    assert panel.size == (3 * 480, 360)
    assert panel.format == "JPEG" and {p.format for p in pictures} == {"JPEG", "PNG"}  # plots stay PNG
    # Offline: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    write_report([runs[0]])  # an earlier report may be replaced


def test_report_compares_runs_and_refuses_to_overwrite_other_files(runs, tmp_path, capsys):
    out = tmp_path / "compare.html"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out), "--examples", "1"]) == 0
    page = out.read_text()
    assert "Comparison" in page and page.count("<h2 id=\"run") == 2
    assert "against training time" in page and "per-class IoU of every run" in page
    assert main(["report", str(runs[0]), str(runs[1])]) == 2  # several runs: --out needed
    assert "--out" in capsys.readouterr().err
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    with pytest.raises(OutputError, match="not a pixelwise report"):
        write_report([runs[0]], mine)
    assert mine.read_text() == "<html>my notes</html>"
    with pytest.raises(DataError, match="not a run folder"):
        write_report([tmp_path], tmp_path / "x.html")
    with pytest.raises(OutputError, match=".html"):
        write_report([runs[0]], tmp_path / "x.txt")


def test_report_without_the_dataset_says_why_images_are_missing(runs, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(runs[0], copy, ignore=shutil.ignore_patterns(".lock", "report.html"))
    page = write_report([copy], data_root=str(tmp_path / "nowhere")).read_text()
    assert "Validation images not shown" in page and "not found" in page
    assert "Confusion matrix" in page  # the rest of the page is there


@pytest.mark.slow  # 13 s: keeps the default suite under 10 minutes
def test_train_writes_an_instance_report(tmp_path):
    root = require_dataset("isbi2012").parent
    run = tmp_path / "mrcnn"
    small = ["-o", "model.args.min_size=128", "-o", "model.args.max_size=128", "-o", "model.args.box_batch_size_per_image=64",
             "-o", "model.args.rpn_post_nms_top_n=[200, 100]", "-o", "model.args.detections_per_img=100",
             "-o", "train.device=cpu", "-o", "data.limit=2", "-o", "train.max_steps=2", "-o", "train.val_every=2",
             "-o", "infer.score_threshold=0.0"]
    assert main(["train", "mask_rcnn_r18_fpn_isbi_cpu", "--data-root", str(root), "--output-dir", str(run), *small]) == 0
    page = (run / "report.html").read_text()
    assert "COCO AP" in page and "segm" in page and "objects in the ground truth" in page
    assert len(images_of(page)) >= 1 + 2  # curves and two ground truth | detections panels


def test_title_names_the_folder_once_and_best_row_names_its_metric_rounded(tmp_path):
    run = tiny_fcn_run(tmp_path / "run")
    page = write_report([run]).read_text()
    title = re.search(r"<title>(.*?)</title>", page)[1]
    assert title == "pixelwise report: fcn8s on camvid, folder run" and "run run" not in page
    best = json.loads((run / "train_state.json").read_text())["best_metric"]
    assert f'<td class="l">miou {best:.4f} at step 2</td>' in page and repr(best) not in page


def test_a_curve_of_one_point_is_drawn():
    """matplotlib draws a line of one point as nothing: the single point gets a marker."""
    from pixelwise.report.html import curves_png

    def coloured(png: bytes) -> int:  # pixels of matplotlib's first colour (C0, #1f77b4)
        a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int((np.abs(a - [0x1F, 0x77, 0xB4]).sum(axis=2) < 60).sum())

    one = curves_png([("run", [{"step": "1", "loss": "0.5"}])])
    two = curves_png([("run", [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "0.4"}])])
    assert coloured(one) > 10 and coloured(two) > 10
