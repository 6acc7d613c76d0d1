"""FCN on the engine: staged initialisation from a checkpoint, class balancing, loss sampling, aux heads."""
from pathlib import Path

import pytest
import torch

from pixelwise.config import load_config
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.run import build_model, init_weights
from pixelwise.engine.tasks.semantic import resolve_class_weights
from pixelwise.engine.trainer import train
from pixelwise.models.weights import WeightsError


def camvid_config(tmp_path, camvid_dir, name, *extra):
    return load_config("configs/fcn8s_camvid_cpu.yaml", [
        f"output_dir={tmp_path / name}", f"data.root={camvid_dir.parent}", f"model.name={name}",
        "model.args.width=0.125", "model.args.fc_channels=32", "data.augment.crop_size=64", "train.batch_size=2",
        "train.max_steps=2", "train.val_every=100", "train.time_limit=null", "train.device=cpu", *extra,
    ])


def test_staged_training_starts_from_the_coarser_net(tmp_path, camvid_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    # Validation on all 101 val images is the slow part of a run; these runs skip it.
    monkeypatch.setattr("pixelwise.engine.tasks.semantic.SemanticTask.evaluate", lambda *a, **k: {"miou": 0.0})
    cfg32 = camvid_config(tmp_path, camvid_dir, "fcn32s", "train.loss_sampling_p=0.5")
    train(cfg32, progress=False)
    ckpt = str(tmp_path / "fcn32s" / "last.pt")
    fcn32 = build_model(cfg32).eval()
    fcn32.load_state_dict(load_checkpoint(ckpt)["model"])
    cfg16 = camvid_config(tmp_path, camvid_dir, "fcn16s", f"model.init_from={ckpt}", "train.lr=1e-5")
    fcn16 = build_model(cfg16).eval()
    init_weights(cfg16, fcn16, ckpt)
    x = torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        torch.testing.assert_close(fcn16(x), fcn32(x), rtol=0, atol=1e-5)  # section 4.2
    state = train(cfg16, progress=False)  # the config path: model.init_from is loaded by train()
    assert state.step == 2
    with pytest.raises(WeightsError, match="not a coarser FCN"):  # FCN-16s weights into FCN-32s
        init_weights(cfg32, build_model(cfg32), str(tmp_path / "fcn16s" / "last.pt"))


def test_median_frequency_class_weights_from_config(tmp_path, camvid_dir):
    from pixelwise.data import build_dataset

    cfg = camvid_config(tmp_path, camvid_dir, "fcn8s")
    weights = resolve_class_weights(cfg, build_dataset(cfg.data, "train"))
    assert weights.shape == (11,) and torch.isfinite(weights).all() and (weights > 0).all()
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"]
    assert weights[names.index("pole")] > weights[names.index("road")]


def test_auxiliary_head_loss(tmp_path, camvid_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setattr("pixelwise.engine.tasks.semantic.SemanticTask.evaluate", lambda *a, **k: {"miou": 0.0})
    cfg = camvid_config(tmp_path, camvid_dir, "fcn_resnet50", "model.args={aux_loss: true}", "train.max_steps=1",
                        "train.class_weights=null")
    state = train(cfg, progress=False)
    assert state.step == 1 and state.last_loss == state.last_loss  # finite
