"""`pixelwise eval` and `pixelwise predict` with --checkpoint alone (the checkpoint holds its config), on a
folder dataset written here (no shared data needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.runs import trained_run
from pixelwise.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("ckpt_only"))


def test_eval_with_the_checkpoint_alone(run, capsys):
    assert main(["eval", "--checkpoint", str(run / "run" / "best.pt")]) == 0
    metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "folder" and metrics["split"] == "val" and metrics["num_images"] == 2
    assert metrics["class_names"] == ["class0", "class1"]
    # The same numbers with the recipe given, and overrides still apply without it.
    assert main(["eval", str(run / "recipe.yaml"), "--checkpoint", str(run / "run" / "best.pt"),
                 "--out", str(run / "with_recipe.json")]) == 0
    assert json.loads((run / "with_recipe.json").read_text())["miou"] == metrics["miou"]
    assert main(["eval", "--checkpoint", str(run / "run" / "best.pt"), "-o", "data.val_split=train",
                 "--out", str(run / "train.json")]) == 0
    assert json.loads((run / "train.json").read_text())["num_images"] == 6


def test_predict_with_the_checkpoint_alone_or_with_a_recipe(run):
    images = run / "data" / "disks" / "val" / "images"
    assert main(["predict", "--checkpoint", str(run / "run" / "best.pt"), str(images), "--out", str(run / "a")]) == 0
    assert main(["predict", str(run / "recipe.yaml"), "--checkpoint", str(run / "run" / "best.pt"), str(images / "00.png"),
                 str(images / "01.png"), "--out", str(run / "b")]) == 0
    for name in ("00", "01"):
        assert np.array_equal(np.array(Image.open(run / "a" / f"{name}.png")), np.array(Image.open(run / "b" / f"{name}.png")))
    assert json.loads((run / "a" / "classes.json").read_text())["classes"][1]["name"] == "class1"


def test_a_recipe_that_disagrees_with_the_checkpoint_is_refused(run, capsys):
    code = main(["eval", str(run / "recipe.yaml"), "-o", "model.args.base_width=8", "--checkpoint",
                 str(run / "run" / "best.pt"), "--out", str(run / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "model.args" in err and "Leave out the CONFIG" in err
    with pytest.raises(SystemExit) as e:  # no INPUTS: argparse's usage error
        main(["predict", "--checkpoint", str(run / "run" / "best.pt"), "--out", str(run / "c")])
    assert e.value.code == 2
    assert main(["predict", str(run / "recipe.yaml"), "--checkpoint", str(run / "run" / "best.pt"),
                 "--out", str(run / "c")]) == 2  # a recipe but no image
    assert "needs INPUTS" in capsys.readouterr().err


def test_every_path_to_labels_is_the_one_output_step_with_the_image_as_read(run, monkeypatch, tmp_path):
    """Predictor.postprocess(probs, image) is where probabilities become labels for eval, predict, the report and a
    Predictor call, and it receives the image as read ([0, 1], not normalised), for refinements such as a CRF."""
    from pixelwise.data.io import read_image
    from pixelwise.engine.predictor import Predictor
    from pixelwise.inference import load_predictor
    from pixelwise.report.run import write_report

    images = run / "data" / "disks" / "val" / "images"
    expected = [read_image(images / f"{i:02d}.png", channels=1) for i in range(2)]
    seen, original = [], Predictor.postprocess

    def recording(self, probs, image=None):
        seen.append(image)
        return original(self, probs, image)

    monkeypatch.setattr(Predictor, "postprocess", recording)

    def check(what: str, count: int) -> None:
        assert len(seen) == count, what
        for got in seen:
            assert got is not None and any(torch.allclose(got, e, atol=1e-5) for e in expected), what
        seen.clear()

    best = run / "run" / "best.pt"
    load_predictor(best)(images / "00.png")
    check("Predictor call", 1)
    assert main(["eval", "--checkpoint", str(best), "--out", str(tmp_path / "m.json")]) == 0
    check("eval", 2)
    assert main(["predict", "--checkpoint", str(best), str(images), "--out", str(tmp_path / "p")]) == 0
    check("predict", 2)
    write_report([run / "run"], tmp_path / "r.html", examples=1)
    check("report examples", 2)  # the best and the worst image
