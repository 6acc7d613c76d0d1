"""SIFT Flow's semantic and geometric labels, and FCN's two-headed net that learns both (section 5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from pixelwise.config import Config, ConfigError, apply_override
from pixelwise.data import DataError, build_dataset

FOLDER = "spatial_envelope_256x256_static_8outdoorcategories"


def _siftflow(root, n=4, size=32):
    rng = np.random.default_rng(0)
    for sub in ("Images", "SemanticLabels", "GeoLabels"):
        (root / "siftflow" / sub / FOLDER).mkdir(parents=True)
    ids = [f"coast_{i}" for i in range(n)]
    for i in ids:
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(
            root / "siftflow" / "Images" / FOLDER / f"{i}.jpg")
        semantic = np.zeros((size, size), np.int16)
        semantic[: size // 2] = 28  # sky (class 27 after the shift)
        semantic[size // 2:] = 25  # sea
        semantic[0, 0] = 0  # unlabelled
        geo = np.full((size, size), 3, np.int16)  # vertical
        geo[: size // 2] = 1  # sky
        geo[-1, -1] = -1  # unlabelled, as GeoLabels sometimes say
        savemat(root / "siftflow" / "SemanticLabels" / FOLDER / f"{i}.mat", {"S": semantic})
        savemat(root / "siftflow" / "GeoLabels" / FOLDER / f"{i}.mat", {"S": geo})
    (root / "siftflow" / "trainval.txt").write_text("\n".join(ids[:3]) + "\n")
    (root / "siftflow" / "test.txt").write_text(ids[3] + "\n")


def _cfg(root, out, *overrides):
    cfg = Config()
    for o in ("data.dataset=siftflow", f"data.root={root}", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]",
              "model.name=fcn16s", "model.num_classes=33",
              "model.args={pad100: false, width: 0.0625, fc_channels: 16, batch_norm: true, extra_heads: {geo: 3}}",
              "train.batch_size=2", "train.max_steps=2", "train.val_every=2", "train.lr=0.01", "train.optimizer=adam",
              "train.threads=2", f"output_dir={out}", "train.best_metric=geo_miou", *overrides):
        apply_override(cfg, o)
    return cfg


def test_siftflow_labels_shift_by_one_with_unlabelled_ignored(tmp_path):
    _siftflow(tmp_path)
    ds = build_dataset(_cfg(tmp_path, tmp_path / "run").data, "train")
    _, target = ds[0]
    mask, geo = target["mask"].numpy(), target["geo"].numpy()
    assert len(ds) == 3 and ds.class_names[27] == "sky"
    assert mask[1, 1] == 27 and mask[-1, 0] == 24 and mask[0, 0] == 255
    assert geo[1, 1] == 0 and geo[-2, 0] == 2 and geo[-1, -1] == 255
    savemat(tmp_path / "siftflow" / "GeoLabels" / FOLDER / "coast_0.mat", {"S": np.full((32, 32), 7, np.int16)})
    with pytest.raises(DataError, match=r"coast_0.mat' has values 7..7; expected 0 \(unlabelled\) and the classes 1..3"):
        ds[0]


def test_the_two_headed_fcn_learns_and_is_scored_on_both_labels(tmp_path):
    from pixelwise.engine import train
    from pixelwise.engine.run import build_run

    _siftflow(tmp_path)
    cfg = _cfg(tmp_path, tmp_path / "run")
    run = build_run(cfg)
    out = run.model.eval()(torch.rand(1, 3, 32, 32))
    assert set(out) == {"out", "geo"} and out["out"].shape == (1, 33, 32, 32) and out["geo"].shape == (1, 3, 32, 32)
    run.task.prepare(run.train_ds, torch.device("cpu"), progress=False)
    images, targets = run.task.collate([run.train_ds[0], run.train_ds[1]])
    assert {"ce", "geo_ce"} == set(run.task.loss(run.model.train(), (images, targets)))
    state = train(cfg, progress=False)
    assert 0 <= state.metrics["geo_miou"] <= 1 and "miou" in state.metrics and "geo_pixel_acc" in state.metrics
    with pytest.raises(ConfigError, match=r"extra_heads has geo: 4, but 'siftflow' offers the extra labels \{geo: 3\}"):
        build_run(_cfg(tmp_path, tmp_path / "bad", "model.args.extra_heads={geo: 4}"))


def test_fcn16s_starts_from_a_two_headed_fcn32s_with_both_new_skips_at_zero():
    from pixelwise import create_model

    args = dict(pad100=False, width=0.0625, fc_channels=16, num_classes=33, extra_heads={"geo": 3})
    coarse, fine = create_model("fcn32s", **args).eval(), create_model("fcn16s", **args).eval()
    new = fine.load_staged(coarse.state_dict())
    assert any(k.startswith("extra_heads.geo.score_pool4") for k in new)
    x = torch.rand(1, 3, 64, 64)
    a, b = coarse(x), fine(x)
    for key in ("out", "geo"):  # section 4.2: the finer net starts with the coarser one's predictions
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
