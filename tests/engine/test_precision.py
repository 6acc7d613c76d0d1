"""The fast path: bf16 autocast and channels_last in training and inference, BatchNorm folding, the old amp key."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from pixelwise.config import Config, apply_override, from_dict
from pixelwise.engine import train
from pixelwise.inference import load_predictor
from pixelwise.engine.precision import autocast, fold_batchnorm
from pixelwise.errors import ConfigError

from helpers.synthetic import Boxes, instance_config, instance_data, semantic_config, semantic_data


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():  # statistics far from the identity, so that folding them matters
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    return bn


class Shared(nn.Module):
    """conv -> bn (foldable); relu -> bn2 (not after a conv); a conv called twice (not foldable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8)
        self.bn2 = _bn(8)
        self.twice, self.bn3 = nn.Conv2d(8, 8, 1), _bn(8)
        self.head, self.frozen = nn.Conv2d(8, 4, 1), FrozenBatchNorm2d(4)
        with torch.no_grad():
            self.frozen.running_mean.uniform_(-1, 1)
            self.frozen.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.bn2(torch.relu(self.bn(self.conv(x))))
        x = self.bn3(self.twice(self.twice(x)))
        return self.frozen(self.head(x))


def test_fold_batchnorm_folds_exactly_the_conv_bn_pairs():
    torch.manual_seed(0)
    model = Shared().eval()
    x = torch.randn(2, 3, 16, 16)
    folded, n = fold_batchnorm(model, (x,))
    assert n == 2  # conv+bn and head+frozen; not bn2 (after a ReLU) and not bn3 (its conv runs twice)
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.frozen, nn.Identity)
    assert isinstance(folded.bn2, nn.BatchNorm2d) and isinstance(folded.bn3, nn.BatchNorm2d)
    assert isinstance(model.bn, nn.BatchNorm2d)  # the original is left as it was
    with torch.no_grad():
        y = torch.randn(1, 3, 24, 20)  # another input than the one the pairs were found on
        assert torch.allclose(folded(y), model(y), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_of_every_unet_batchnorm_gives_the_same_prediction(tmp_path):
    train(semantic_config(tmp_path / "run", "model.args={base_width: 4, depth: 2, batch_norm: true}"),
          datasets=semantic_data(), progress=False)
    image = (Disks_image() * 255).astype(np.uint8)
    plain = load_predictor(tmp_path / "run" / "best.pt")
    folded = load_predictor(tmp_path / "run" / "best.pt", fold_bn=True)
    n_bn = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert n_bn(plain.model) > 0 and n_bn(folded.model) == 0
    assert torch.allclose(plain.predict_probs(plain.preprocess(image)), folded.predict_probs(folded.preprocess(image)),
                          atol=1e-5)


@pytest.mark.slow  # compiles twice (about 40 s)
def test_infer_compile_gives_the_uncompiled_prediction(tmp_path):
    train(semantic_config(tmp_path / "run", "model.args={base_width: 4, depth: 2, batch_norm: true}"),
          datasets=semantic_data(), progress=False)
    image = (Disks_image() * 255).astype(np.uint8)
    plain = load_predictor(tmp_path / "run" / "best.pt")
    compiled = load_predictor(tmp_path / "run" / "best.pt", compile=True, fold_bn=True)
    assert type(compiled.model).__name__ == "OptimizedModule"
    torch.testing.assert_close(compiled.predict_probs(compiled.preprocess(image)),
                               plain.predict_probs(plain.preprocess(image)), atol=1e-4, rtol=0)
    assert torch.equal(compiled(image), plain(image))


def Disks_image() -> np.ndarray:
    return semantic_data()["val"].images[0][0].clamp(0, 1).numpy()


def test_bf16_training_keeps_weights_and_batchnorm_statistics_in_fp32(tmp_path):
    cfg = semantic_config(tmp_path / "run", "model.args={base_width: 4, depth: 2, batch_norm: true}",
                          "train.precision=bf16", "train.channels_last=true")
    state = train(cfg, datasets=semantic_data(), progress=False)
    assert state.step == 4 and 0 <= state.metrics["miou"] <= 1
    from pixelwise.engine.checkpoint import load_checkpoint

    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert {v.dtype for k, v in weights.items() if "num_batches" not in k} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_bf16_mask_rcnn_training_and_inference_run(tmp_path):
    state = train(instance_config(tmp_path / "run", "train.precision=bf16", "train.channels_last=true"),
                  datasets=instance_data(), progress=False)
    assert state.step == 2 and -1 <= state.metrics["segm_AP"] <= 1
    predictor = load_predictor(tmp_path / "run" / "last.pt")
    image = (Boxes(1, seed=5).samples[0][0].transpose(1, 2, 0) * 255).astype(np.uint8)
    d = predictor(image)
    assert d["boxes"].dtype == torch.float32 and d["masks"].shape[-2:] == image.shape[:2]


def test_bf16_inference_agrees_with_fp32(tmp_path):
    train(semantic_config(tmp_path / "run", "train.max_steps=30", "train.val_every=30"), datasets=semantic_data(),
          progress=False)
    image = (Disks_image() * 255).astype(np.uint8)
    fp32 = load_predictor(tmp_path / "run" / "best.pt")
    bf16 = load_predictor(tmp_path / "run" / "best.pt", precision="bf16", channels_last=True)
    p, q = fp32.predict_probs(fp32.preprocess(image)), bf16.predict_probs(bf16.preprocess(image))
    assert q.dtype == torch.float32
    assert (p.argmax(0) == q.argmax(0)).float().mean() > 0.99
    assert 0 < (p - q).abs().max() < 0.05  # bf16 is really used, and close


def test_fp16_on_the_cpu_and_unknown_precisions_are_refused():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        autocast(torch.device("cpu"), "fp16")
    cfg = Config()
    with pytest.raises(ConfigError, match="precision"):
        apply_override(cfg, "train.precision=int8")


def test_the_old_amp_key_still_reads():
    cfg = Config()
    apply_override(cfg, "train.amp=bf16")
    assert cfg.train.precision == "bf16"
    assert from_dict({"train": {"amp": "none"}}, "old config").train.precision == "fp32"


def test_under_bf16_autocast_anchors_proposals_and_box_outputs_stay_float32():
    """bf16 anchors put boxes 4-8 px apart at 1000 px, enough to make the bf16 Mask R-CNN recipe's box loss NaN."""
    import pixelwise

    torch.manual_seed(0)
    model = pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=1, norm="gn", frozen_bn=False, min_size=64,
                                   max_size=64)
    seen = {}
    model.roi_heads.register_forward_pre_hook(lambda m, args: seen.update(proposals=args[1]))
    image, target = Boxes(1, seed=0)[0]
    target = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
    with autocast(torch.device("cpu"), "bf16"):
        losses = model([image.as_subclass(torch.Tensor)], [target], detect=True)
    assert {p.dtype for p in seen["proposals"]} == {torch.float32}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses["losses"].values())
    assert losses["detections"][0]["boxes"].dtype == torch.float32
