"""The fully connected CRF: the PyTorch lattice agrees with Krähenbühl's C++ code, refines noisy unaries, is
differentiable, and refuses what it cannot use."""
from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from pixelwise.crf import CRFParams, Lattice, dense_crf, features, mean_field
from pixelwise.errors import ConfigError


def _scene(k: int = 4, h: int = 48, w: int = 64, seed: int = 0, noise: float = 1.5):
    """An image of flat regions with a little noise, its labels, and noisy probabilities that get ~half the
    pixels right."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    truth = np.zeros((h, w), np.int64)
    image[:, w // 2:], truth[:, w // 2:] = 200, 1
    image[h // 4: h // 2, w // 8: w // 3], truth[h // 4: h // 2, w // 8: w // 3] = (30, 120, 250), 2
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    logits = rng.normal(0, noise, (k, h, w))
    logits[truth, np.arange(h)[:, None], np.arange(w)] += 1.5
    return image, truth, torch.softmax(torch.tensor(logits, dtype=torch.float32), 0)


def test_refines_noisy_unaries_along_the_image_edges():
    image, truth, probs = _scene()
    before = (probs.argmax(0).numpy() == truth).mean()
    after = (dense_crf(probs, image).argmax(0).numpy() == truth).mean()
    assert before < 0.6 and after > 0.98  # chance would be 1/4


def test_zero_iterations_and_zero_weights_give_the_model_back():
    image, _, probs = _scene()
    assert torch.allclose(dense_crf(probs, image, iterations=0), probs.clamp(min=1e-5) / probs.clamp(min=1e-5).sum(0),
                          atol=1e-6)
    assert torch.allclose(dense_crf(probs, image, w1=0, w2=0), dense_crf(probs, image, iterations=0), atol=1e-6)


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("matrix", [False, True])
def test_torch_backend_agrees_with_pydensecrf(grey, matrix):
    pytest.importorskip("pydensecrf.densecrf")
    image, _, probs = _scene(seed=1)
    image = image[..., 0] if grey else image
    compat = None
    if matrix:  # a non-Potts compatibility: classes 0 and 1 are cheap neighbours
        compat = 1 - np.eye(4)
        compat[0, 1] = compat[1, 0] = 0.3
    ours = dense_crf(probs, image, backend="torch", compat=compat)
    reference = dense_crf(probs, image, backend="pydensecrf", compat=compat)
    assert (ours - reference).abs().max() < 1e-4
    assert (ours.argmax(0) == reference.argmax(0)).float().mean() >= 0.995


def test_potts_is_the_matrix_one_minus_identity():
    image, _, probs = _scene(seed=2)
    assert torch.allclose(dense_crf(probs, image), dense_crf(probs, image, compat=1 - np.eye(4)), atol=1e-6)


def test_a_batch_is_refined_image_by_image():
    image, _, probs = _scene(seed=3)
    batch = dense_crf(torch.stack([probs, probs.flip(0)]), np.stack([image, image]))
    assert torch.allclose(batch[1], dense_crf(probs.flip(0), image), atol=1e-6)


def test_the_lattice_filter_is_a_gaussian_blur():
    """One point's filter response decreases with the distance in feature space, symmetric, and normalised
    (a constant stays nearly constant away from the borders)."""
    xs = torch.arange(200, dtype=torch.float32)[:, None] / 4  # sigma = 4 samples
    lattice = Lattice(xs)
    impulse = torch.zeros(200, 1)
    impulse[100] = 1
    response = lattice.filter(impulse)[:, 0]
    assert response[100] == response.max() and response[92] < response[96] < response[100]
    assert abs(response[96] - response[104]) < 0.25 * response[100]
    flat = lattice.filter(torch.ones(200, 1))[20:180, 0]
    assert (flat.max() - flat.min()) / flat.mean() < 0.05


def test_differentiable_in_the_probabilities_weights_and_compatibility():
    image, _, probs = _scene(k=3, h=6, w=7, seed=4)
    colours = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)
    params = CRFParams(iterations=3, theta_alpha=3.0, theta_beta=20.0, theta_gamma=2.0)
    p = probs.double().requires_grad_()
    weights = torch.tensor([2.0, 1.0], dtype=torch.float64, requires_grad=True)
    compat = (1 - torch.eye(3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, w, c: mean_field(p, colours, params, c, weights=w),
                                    (p, weights, compat), eps=1e-6, atol=1e-5)


def test_features_are_the_papers():
    colours = torch.full((3, 2, 3), 130.0)
    appearance, smoothness = features(colours, CRFParams(theta_alpha=2.0, theta_beta=13.0, theta_gamma=0.5))
    assert appearance.shape == (6, 5) and smoothness.shape == (6, 2)
    assert appearance[5].tolist() == [1.0, 0.5, 10.0, 10.0, 10.0]  # (x, y) = (2, 1) over 2; 130 over 13
    assert smoothness[5].tolist() == [4.0, 2.0]


def test_refusals():
    image, _, probs = _scene()
    with pytest.raises(ConfigError, match="backend='dense'"):
        dense_crf(probs, image, backend="dense")
    with pytest.raises(ConfigError, match="theta_beta=0"):
        dense_crf(probs, image, theta_beta=0)
    with pytest.raises(ValueError, match="image of .* pixels for probabilities"):
        dense_crf(probs, image[:10])
    with pytest.raises(ValueError, match="expected the original uint8 image"):
        dense_crf(probs, image.astype(np.float64))
    with pytest.raises(ValueError, match=r"compat of shape \(3, 3\), expected \(4, 4\)"):
        dense_crf(probs, image, compat=np.eye(3))


def test_a_missing_extra_is_named(monkeypatch):
    real = builtins.__import__

    def no_pydensecrf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydensecrf)
    image, _, probs = _scene()
    with pytest.raises(ConfigError, match=r"pixelwise\[crf\]"):
        dense_crf(probs, image, backend="pydensecrf")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from helpers.runs import trained_run

    return trained_run(tmp_path_factory.mktemp("crf"))


def test_infer_crf_runs_in_eval_predict_and_an_exported_runtime(run, tmp_path, monkeypatch):
    """The output step applies the configured CRF, on the probabilities of PyTorch or of ONNX Runtime, with the
    image as read: predict's labels are the CRF's refinement of the plain probabilities."""
    from PIL import Image

    import pixelwise.engine.predictor as predictor_module
    from pixelwise.cli import main
    from pixelwise.data.io import read_image
    from pixelwise.inference import load_predictor

    calls = []
    real = predictor_module.dense_crf

    def recording(probs, image, **kwargs):
        calls.append(kwargs)
        return real(probs, image, **kwargs)

    monkeypatch.setattr(predictor_module, "dense_crf", recording)
    best, images = run / "run" / "best.pt", run / "data" / "disks" / "val" / "images"
    crf = ["-o", "infer.crf={iterations: 3, w1: 5, theta_beta: 20}"]
    assert main(["eval", "--checkpoint", str(best), "--out", str(tmp_path / "m.json"), *crf]) == 0
    assert len(calls) == 2 and calls[0]["iterations"] == 3 and calls[0]["w1"] == 5 and calls[0]["w2"] == 3.0
    assert main(["predict", "--checkpoint", str(best), str(images / "00.png"), "--out", str(tmp_path / "p"), *crf]) == 0
    plain = load_predictor(best)
    image = read_image(images / "00.png", channels=1)
    probs = plain.predict_probs(plain.preprocess(images / "00.png"))
    expected = real(probs, image, iterations=3, w1=5, theta_beta=20).argmax(0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "00.png")), expected.numpy())
    assert main(["export", "--checkpoint", str(best), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    calls.clear()
    assert main(["eval", "--checkpoint", str(tmp_path / "m.onnx"), "--runtime", "onnxruntime",
                 "--out", str(tmp_path / "o.json"), *crf]) == 0
    assert len(calls) == 2


def test_a_misspelt_crf_key_is_refused_before_anything_runs(run, capsys):
    from pixelwise.cli import main

    assert main(["eval", "--checkpoint", str(run / "run" / "best.pt"), "-o", "infer.crf.iters=3"]) == 2
    assert "did you mean infer.crf.iterations" in capsys.readouterr().err


def test_trimap_accuracy_counts_only_the_band_around_label_boundaries():
    from pixelwise.metrics.boundary import trimap_counts, trimap_metrics

    mask = torch.zeros(40, 40, dtype=torch.long)
    mask[:, 20:] = 1  # one vertical boundary between columns 19 and 20
    mask[0, 0] = 255  # ignored
    pred = mask.clone()
    pred[:, 17] = 1  # wrong 2-3 pixels from the boundary
    pred[:, 0] = 1  # wrong far away: counts nowhere in a band of <= 10
    counts = trimap_counts(pred, mask, ignore_index=255, widths=(1, 3, 10))
    assert counts[1] == (160, 160)  # columns 18-21 (the boundary pixels are columns 19 and 20)
    assert counts[3] == (280, 320)  # columns 16-23, column 17 wrong
    assert counts[10] == (840, 880)  # columns 9-30
    assert trimap_metrics({k: list(v) for k, v in counts.items()})["trimap_acc_3"] == pytest.approx(280 / 320)
    assert trimap_counts(mask, torch.zeros(5, 5, dtype=torch.long), None, widths=(2,)) == {2: (0, 0)}


def test_crf_search_writes_the_settings_it_tried_and_the_best(run, tmp_path, capsys):
    import json

    from pixelwise.cli import main

    out = tmp_path / "search.json"
    assert main(["crf-search", "--checkpoint", str(run / "run" / "best.pt"), "--images", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    settings = [(t["w1"], t["theta_alpha"], t["theta_beta"]) for t in result["tried"]]
    assert len(settings) > 27 and len(set(settings)) == len(settings)  # the coarse grid, then new fine points
    assert result["miou_best"] == max(t["miou"] for t in result["tried"])
    if result["best"] is None:
        assert result["miou_best"] <= result["miou_without_crf"] and "leave infer.crf off" in capsys.readouterr().out
    else:
        assert result["miou_best"] > result["miou_without_crf"] and result["best"]["w2"] == 3.0
        assert "infer.crf=" in capsys.readouterr().out
    assert main(["crf-search", "--checkpoint", str(run / "run" / "best.pt"), "--images", "1", "--out", str(out)]) == 0
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    assert main(["crf-search", "--checkpoint", str(run / "run" / "best.pt"), "--out", str(notes)]) == 2
    assert notes.read_text() == "{}"
