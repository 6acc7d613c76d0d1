"""The training loop on in-memory data (no dataset files): both tasks end to end, exact resume, accumulation,
load_predictor on images as users have them."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.engine import build_run, train
from pixelwise.inference import load_predictor
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.distributed import DistInfo
from pixelwise.engine.trainer import Trainer

from helpers.synthetic import Disks, instance_config, instance_data, semantic_config, semantic_data


def log(run) -> list[dict]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


def losses(run) -> list[float]:
    return [float(r["loss"]) for r in log(run) if r.get("loss")]


class StopAt:
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, logs):
        if trainer.state.step == self.step:
            trainer.state.stop_requested = True


def test_semantic_run_writes_checkpoints_logs_and_metrics(tmp_path):
    state = train(semantic_config(tmp_path / "run"), datasets=semantic_data(), progress=False)
    assert state.step == 4 and state.stopped is None and state.best_step in (2, 4)
    rows = log(tmp_path / "run")
    assert [int(r["step"]) for r in rows if r.get("loss")] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r.get("val_miou")] == [2, 4]  # every val_every, and at the end
    assert "ce" not in rows[0]  # a single loss term is logged as the loss only
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert "optimizer" not in best and "optimizer" in last and last["step"] == 4
    assert best["class_names"] == ["background", "disk"] and 0 <= state.metrics["miou"] <= 1


def test_instance_run_logs_every_loss_term_and_scores_coco_ap(tmp_path):
    state = train(instance_config(tmp_path / "run"), datasets=instance_data(), progress=False)
    row = log(tmp_path / "run")[0]
    terms = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert terms <= set(row)
    assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in terms), rel=1e-5)
    assert state.step == 2 and -1 <= state.metrics["segm_AP"] <= 1 and state.metrics["num_images"] == 2


def test_resume_on_synthetic_data_is_exact(tmp_path):
    full = train(semantic_config(tmp_path / "a", "train.max_steps=6"), datasets=semantic_data(), progress=False)
    cfg = semantic_config(tmp_path / "b", "train.max_steps=6")
    assert train(cfg, datasets=semantic_data(), hooks=(StopAt(3),), progress=False).stopped == "signal"
    resumed = train(cfg, datasets=semantic_data(), resume=str(tmp_path / "b" / "last.pt"), progress=False)
    assert full.step == resumed.step == 6
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_step_accumulates_micro_batches_before_stepping(tmp_path):
    cfg = semantic_config(tmp_path / "run", "train.grad_accum=2", "train.batch_size=1")
    run = build_run(cfg, datasets=semantic_data())
    run.task.prepare(run.train_ds, torch.device("cpu"), False)
    trainer = Trainer(run, info=DistInfo(), device=torch.device("cpu"), progress=False)
    batch = run.task.collate([run.train_ds[0]])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.run_step(batch) is None  # first micro-batch: gradients only
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    logs = trainer.run_step(batch)
    assert trainer.state.step == 1 and set(logs) == {"loss", "lr", "epoch"}
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_predictor_from_checkpoint_takes_images_as_users_have_them(tmp_path):
    train(semantic_config(tmp_path / "run"), datasets=semantic_data(), progress=False)
    predictor = load_predictor(tmp_path / "run" / "best.pt", device="cpu", tile=16, overlap=4)
    assert (predictor.tile, predictor.overlap) == (16, 4)
    image = (Disks(1, seed=5).images[0][0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(image).save(tmp_path / "slice.png")
    from_array = predictor(image)
    assert from_array.shape == image.shape and from_array.dtype == torch.int64
    assert torch.equal(predictor(Image.fromarray(image)), from_array)
    assert torch.equal(predictor(tmp_path / "slice.png"), from_array)
    # The same as normalising by hand with the config's mean and std and calling predict_probs.
    manual = (torch.from_numpy(image).float()[None] / 255 - 0.5) / 0.25
    assert torch.equal(predictor.predict_probs(manual).argmax(0), from_array)
    with pytest.raises(ValueError, match="uint8"):
        predictor(image.astype(np.float32))


def test_instance_predictor_from_checkpoint(tmp_path):
    train(instance_config(tmp_path / "run"), datasets=instance_data(), progress=False)
    predictor = load_predictor(tmp_path / "run" / "last.pt", device="cpu")
    image = (instance_data()["val"][0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (H, W, 3)
    d = predictor(image)
    n = len(d["scores"])
    assert d["boxes"].shape == (n, 4) and d["masks"].shape[0] == n and d["masks"].shape[-2:] == image.shape[:2]
    assert d["class_names"] == ["box"] * n
    grey = predictor(image[..., 0])  # a grey image is repeated to RGB: the same picture here
    assert torch.equal(grey["scores"], d["scores"])
