"""Bad values refused before they cost anything: a training crop far larger than the images, and
`-o` overrides that change what a checkpoint's weights were trained with."""
import json
import time

import pytest
import torch
from PIL import Image

from pixelwise.config import apply_override
from pixelwise.engine import build_run, train
from pixelwise.inference import build_inference
from pixelwise.errors import CheckpointError, ConfigError

from helpers.synthetic import Disks, semantic_config, semantic_data, write_split



def folder_config(tmp_path, *overrides: str):
    write_split(tmp_path / "data" / "disks" / "train", Disks(3, size=96, seed=0))
    write_split(tmp_path / "data" / "disks" / "val", Disks(1, size=96, seed=1))
    return semantic_config(tmp_path / "run", f"data.root={tmp_path / 'data'}", "data.path=disks", *overrides)


def test_a_crop_larger_than_every_training_image_is_refused_before_the_first_step(tmp_path):
    cfg = folder_config(tmp_path, "data.augment.crop_size=5000")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"data\.augment\.crop_size=5000 .*96x96 pixels.*00\.png.*at most 96"):
        train(cfg, progress=False)  # today: 5000 x 5000 crops of 96 x 96 images until the kernel kills it
    assert time.perf_counter() - start < 30 and not (tmp_path / "run" / "last.pt").exists()
    apply_override(cfg, "data.augment.crop_size=96")  # the longest side is allowed
    run = build_run(cfg)
    run.task.check(run.model, run.train_ds)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("overrides") / "run"
    train(semantic_config(out), datasets=semantic_data(), progress=False)
    return out / "best.pt"


@pytest.mark.parametrize("overrides,keys", [
    (["data.mean=[0.9]", "data.std=[0.01]"],
     ["data.mean=[0.9] (checkpoint: [0.5])", "data.std=[0.01] (checkpoint: [0.25])"]),
    (["model.args.base_width=8"], ["model.args="]),
    (["model.num_classes=3"], ["model.num_classes=3"]),
])
def test_overrides_of_what_the_weights_were_trained_with_are_refused(checkpoint, overrides, keys):
    with pytest.raises(CheckpointError, match="drop these overrides") as e:
        build_inference(checkpoint, device="cpu", overrides=overrides)
    assert all(k in str(e.value) for k in keys), str(e.value)


def test_overrides_of_inference_settings_still_apply(checkpoint, tmp_path):
    inference = build_inference(checkpoint, device="cpu", overrides=[
        "infer.tile=16", "infer.tta=true", f"data.root={tmp_path}", "data.mean=[0.5]", "model.args.weights=null"])
    assert (inference.predictor.tile, inference.predictor.tta, inference.cfg.data.root) == (16, True, str(tmp_path))


def test_predict_and_eval_refuse_normalisation_overrides(checkpoint, tmp_path, capsys):
    from pixelwise.cli import main

    image = tmp_path / "slice.png"
    Image.fromarray((Disks(1, seed=5).images[0][0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(image)
    normalisation = ["-o", "data.mean=[0.9]", "-o", "data.std=[0.01]"]
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "p"),
                 *normalisation]) == 2
    err = capsys.readouterr().err
    assert "data.mean=[0.9]" in err and "data.std=[0.01]" in err and not (tmp_path / "p" / "slice.png").exists()
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.json"), *normalisation]) == 2
    assert "data.mean=[0.9]" in capsys.readouterr().err and not (tmp_path / "m.json").exists()
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "q"),
                 "-o", "infer.tile=16"]) == 0
    assert json.loads((tmp_path / "q" / "classes.json").read_text())["classes"]
