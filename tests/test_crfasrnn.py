"""CRF-as-RNN (model.crf): at initialisation the post-processing CRF, trained end to end (its kernel weights and
compatibility learn), in the one output step at inference, exported as the network with the CRF after it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from pixelwise.crf import CRFParams, dense_crf
from pixelwise.errors import ConfigError
from pixelwise.models.crfasrnn import CRFasRNN, CRFLayer
from test_crf import _scene

PARAMS = CRFParams(iterations=4, w1=6.0, theta_alpha=20.0, theta_beta=15.0, w2=2.0, theta_gamma=3.0)


def test_at_initialisation_the_layer_is_the_post_processing_crf():
    image, _, probs = _scene(seed=3)
    layer = CRFLayer(4, PARAMS)
    ours = layer.refine(probs, image)
    reference = dense_crf(probs, image, **vars(PARAMS))
    assert (ours - reference).abs().max() < 1e-5
    # The training path (logits in, logits out) gives the same Q as the inference path.
    colours = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    trained = torch.softmax(layer(torch.log(probs.clamp(min=1e-5))[None], colours)[0], 0)
    assert (trained - reference).abs().max() < 1e-5


def test_the_kernel_weights_and_compatibility_learn_to_refine_noisy_unaries():
    """Started with kernels too weak to act (w1 = w2 = 0.1), trained on one noisy scene, the layer learns to clean
    up a second scene of the same kind it has not seen: from ~45% of its pixels right to more than 95%."""
    image, truth, probs = _scene(seed=4)
    test_image, test_truth, test_probs = _scene(seed=5)
    layer = CRFLayer(4, CRFParams(iterations=3, w1=0.1, theta_alpha=20.0, theta_beta=15.0, w2=0.1))
    before = (layer.refine(test_probs, test_image).argmax(0).numpy() == test_truth).mean()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5)
    logits = torch.log(probs.clamp(min=1e-5))[None]
    colours = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    for _ in range(25):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(layer(logits, colours), torch.from_numpy(truth)[None])
        loss.backward()
        optimizer.step()
    after = (layer.refine(test_probs, test_image).argmax(0).numpy() == test_truth).mean()
    assert before < 0.6 and after > 0.95
    assert not torch.allclose(layer.compat.detach(), 1 - torch.eye(4))  # the compatibility was learnt too


def test_gradients_reach_the_network_through_the_crf():
    net = nn.Conv2d(3, 4, 3, padding=1)
    model = CRFasRNN(net, 4, PARAMS, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = torch.randn(2, 3, 16, 20)
    model(x).logsumexp(1).sum().backward()
    for p in (net.weight, model.crf.kernel_weights, model.crf.compat):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # The CRF sees the colours the normalised input came from.
    assert torch.allclose(model.colours(x, (16, 20)), ((x * 0.25 + 0.5) * 255).round().clamp(0, 255))


def test_model_crf_settings_are_checked(tmp_path):
    from helpers.synthetic import instance_config, semantic_config
    from pixelwise.engine.run import build_run

    with pytest.raises(ConfigError, match="model.crf.iters: unknown key; did you mean model.crf.iterations"):
        build_run(semantic_config(tmp_path, "model.crf={iters: 3}"), datasets={})
    with pytest.raises(ConfigError, match="model.crf.backend: unknown key"):
        build_run(semantic_config(tmp_path, "model.crf={backend: torch}"), datasets={})
    with pytest.raises(ConfigError, match="set infer.crf=null"):
        build_run(semantic_config(tmp_path, "model.crf={}", "infer.crf={}"), datasets={})
    with pytest.raises(ConfigError, match="model.crf refines semantic models"):
        build_run(instance_config(tmp_path, "model.crf={}"), datasets={})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A plain run, then CRF-as-RNN fine-tuned from it (model.init_from)."""
    from helpers.runs import trained_run
    from pixelwise.cli import main

    tmp = trained_run(tmp_path_factory.mktemp("crfasrnn"))
    crf = "model.crf={iterations: 3, w1: 4, theta_alpha: 10, theta_beta: 20}"
    assert main(["train", str(tmp / "recipe.yaml"), "-o", f"output_dir={tmp / 'crfrnn'}", "-o", crf,
                 "-o", f"model.init_from={tmp / 'run' / 'best.pt'}"]) == 0
    return tmp


def test_fine_tuning_starts_from_the_plain_network_and_learns_the_crf(run):
    from pixelwise.engine.checkpoint import load_checkpoint

    plain = load_checkpoint(run / "run" / "best.pt", map_location="cpu")["model"]
    tuned = load_checkpoint(run / "crfrnn" / "last.pt", map_location="cpu")["model"]
    assert set(tuned) == {f"net.{k}" for k in plain} | {"crf.kernel_weights", "crf.compat"}
    assert not torch.equal(tuned["crf.kernel_weights"], torch.tensor([[4.0, 4.0], [3.0, 3.0]]))


def test_the_learned_crf_runs_in_the_output_step_and_after_an_exported_graph(run, tmp_path):
    """eval, predict and an ONNX export of a CRF-as-RNN checkpoint: the network's probabilities (PyTorch or ONNX
    Runtime), then the learned CRF on the whole image; the export's metadata holds the CRF's parameters."""
    from PIL import Image

    from pixelwise.cli import main
    from pixelwise.data.io import read_image
    from pixelwise.deploy.runtimes import read_metadata
    from pixelwise.inference import build_inference, load_predictor

    last, images = run / "crfrnn" / "last.pt", run / "data" / "disks" / "val" / "images"
    inference = build_inference(last)
    model, predictor = inference.model, inference.predictor
    assert predictor.model is model.net and predictor.refinement is model.crf
    probs = predictor.predict_probs(predictor.preprocess(images / "00.png"))
    image = read_image(images / "00.png", channels=1)
    expected = model.crf.refine(probs, image).argmax(0)
    # The whole model on the whole image gives the same labels as network then CRF.
    x = predictor.preprocess(images / "00.png")[None]
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0].argmax(0), expected)
    folded = build_inference(last, overrides=["infer.fold_bn=true"]).predictor  # the net's BatchNorms folded
    assert folded.refinement is not None and torch.equal(folded(images / "00.png"), expected)
    assert main(["predict", "--checkpoint", str(last), str(images / "00.png"), "--out", str(tmp_path / "p")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "00.png")), expected.numpy())
    assert main(["eval", "--checkpoint", str(last), "--out", str(tmp_path / "m.json")]) == 0
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(last), "--format", "onnx", "--out", str(onnx)]) == 0
    state = read_metadata(onnx)["state"]
    assert torch.equal(torch.tensor(state["crf.compat"]), model.crf.compat.detach())
    exported = load_predictor(onnx, runtime="onnxruntime")
    assert exported.refinement is not None and torch.equal(exported(images / "00.png"), expected)
    assert main(["eval", "--checkpoint", str(onnx), "--runtime", "onnxruntime", "--out", str(tmp_path / "o.json")]) == 0
    ours, theirs = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "o.json"))
    assert abs(ours["miou"] - theirs["miou"]) < 1e-3
