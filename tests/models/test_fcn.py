import pytest
import torch
import torchvision

import pixelwise
from pixelwise.models.backbones.vgg import VGG16, convert_torchvision_vgg16
from pixelwise.models.fcn import FCN
from pixelwise.models.weights import WeightsError
from pixelwise.ops.upsample import Placement

TINY = dict(width=0.125, fc_channels=32, dropout=0.5)


def _tiny(name, **kwargs):
    return pixelwise.create_model(name, num_classes=5, **{**TINY, **kwargs})


def _randomise_head(model: FCN) -> None:
    """Make the zero-initialised score and skip layers non-zero, as after training."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.head.named_parameters():
            if name.startswith(("score", "upscore")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_vgg16_convolutionalised_gives_torchvision_class_scores(tmp_path):
    # FCN section 3.1: fc6/fc7/fc8 as 7x7/1x1/1x1 convolutions compute the classifier exactly.
    tv = torchvision.models.vgg16(weights=None).eval()
    ours = VGG16(pad100=False)
    state, fc8 = convert_torchvision_vgg16(tv.state_dict())
    ours.load_state_dict(state)
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv(x)
        fc7 = ours(x)["fc7"]  # (1, 4096, 7, 7) with fc6 padded by 3: the centre sees the whole pool5 map
        scores = torch.nn.functional.conv2d(fc7, fc8["weight"], fc8["bias"])[..., 3, 3]
    assert fc7.shape[-2:] == (7, 7)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_backbone_weights_from_a_local_file(tmp_path):
    tv = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    model = pixelwise.create_model("fcn32s", num_classes=3, backbone_weights=str(path))
    torch.testing.assert_close(model.backbone.fc6.weight, tv.classifier[0].weight.reshape(4096, 512, 7, 7))
    torch.testing.assert_close(model.backbone.features[28].weight, tv.features[28].weight)
    with pytest.raises(WeightsError, match="does not exist"):
        pixelwise.create_model("fcn32s", backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="wrong shape"):
        pixelwise.create_model("fcn32s", backbone_weights=str(path), width=0.5)


@pytest.mark.parametrize("pad100", [True, False])
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_has_input_size(name, pad100):
    model = _tiny(name, pad100=pad100).eval()
    for h, w in ((1, 1), (17, 23), (64, 64), (97, 45)):
        with torch.no_grad():
            assert model(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)


def test_reference_crop_offsets():
    # The Caffe reference nets (pad 100) crop pool4 scores by 5, pool3 scores by 9 and the final
    # outputs by 19 (32s), 27 (16s) and 31 (8s); our placement arithmetic must give the same.
    net = VGG16(pad100=True, **TINY)
    p = net.placements
    up32 = p["fc7"].transposed(64, 32)
    up2 = p["fc7"].transposed(4, 2)
    assert -up32.offset == 19
    assert (up2.offset - p["pool4"].offset) / 16 == 5
    assert -up2.transposed(32, 16).offset == 27
    up4 = up2.transposed(4, 2)
    assert (up4.offset - p["pool3"].offset) / 8 == 9
    assert -up4.transposed(16, 8).offset == 31


@pytest.mark.parametrize("pad100,width", [(True, 58), (False, 64)])
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_alignment_is_centred(name, pad100, width):
    """With left-right symmetric filters and even pooling windows, a correctly aligned net commutes
    with a horizontal flip; an offset error of even one pixel breaks it."""
    model = _tiny(name, pad100=pad100).eval().double()
    _randomise_head(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.kernel_size[1] > 1:
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
        x = torch.randn(1, 3, 21, width, dtype=torch.float64)
        torch.testing.assert_close(model(x.flip(-1)), model(x).flip(-1))


@pytest.mark.parametrize("pad100", [True, False])
def test_staged_nets_start_with_unmodified_predictions(pad100):
    # FCN section 4.2: FCN-16s initialised from FCN-32s (and 8s from 16s) gives the same output,
    # because the new skip scores are zero and the new 2x upsampling is bilinear.
    x = torch.randn(2, 3, 75, 101, dtype=torch.float64)
    previous = _tiny("fcn32s", pad100=pad100).eval().double()
    _randomise_head(previous)
    for name, new in (("fcn16s", ["score_pool4", "upscore2"]), ("fcn8s", ["score_pool3", "upscore_pool4"])):
        model = _tiny(name, pad100=pad100).eval().double()
        added = model.load_staged(previous.state_dict())
        assert sorted({k.split(".")[1] for k in added}) == sorted(new)
        with torch.no_grad():
            torch.testing.assert_close(model(x), previous(x), rtol=0, atol=1e-10)
        _randomise_head(model)
        previous = model


def test_direct_upsampling_reproduces_the_coarser_net_only_approximately():
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    fcn32 = _tiny("fcn32s", upsampling="direct").eval().double()
    _randomise_head(fcn32)
    fcn16 = _tiny("fcn16s", upsampling="direct").eval().double()
    fcn16.load_staged(fcn32.state_dict())
    with torch.no_grad():
        diff = (fcn16(x) - fcn32(x)).abs().max().item()
        scale = fcn32(x).abs().max().item()
    # Random score maps are rough, so the gap is large (about 20% of the largest score here).
    assert 1e-3 * scale < diff < 0.5 * scale


def test_staged_loading_rejects_other_nets():
    fcn8 = _tiny("fcn8s")
    with pytest.raises(WeightsError, match="not a coarser FCN"):
        _tiny("fcn16s").load_staged(fcn8.state_dict())
    with pytest.raises(WeightsError, match="shapes do not fit"):
        _tiny("fcn16s").load_staged(_tiny("fcn32s", fc_channels=16).state_dict())


def test_upsampling_is_learnable_and_final_upsampling_fixed():
    model = _tiny("fcn8s")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.upscore2.weight", "head.upscore_pool4.weight"} <= names
    assert not any("fixed" in n for n in names)
    frozen = _tiny("fcn8s", learn_upsampling=False)
    assert not frozen.head.upscore2.weight.requires_grad


def test_gradients_reach_the_backbone():
    model = _tiny("fcn8s")
    _randomise_head(model)
    model(torch.randn(2, 3, 40, 40)).logsumexp(1).mean().backward()
    assert model.backbone.features[0].weight.grad.abs().sum() > 0
    assert model.head.score_pool3.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [50, 101])
def test_fcn_resnet_loads_torchvision_weights_with_identical_outputs(tmp_path, depth):
    tv = getattr(torchvision.models.segmentation, f"fcn_resnet{depth}")(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    path = tmp_path / "fcn.pth"
    torch.save(tv.state_dict(), path)
    ours = pixelwise.create_model(f"fcn_resnet{depth}", num_classes=4, aux_loss=True, weights=str(path)).eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x)["out"], rtol=0, atol=1e-5)
    no_aux = pixelwise.create_model(f"fcn_resnet{depth}", num_classes=4, weights=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(no_aux(x), tv(x)["out"], rtol=0, atol=1e-5)


def test_fcn_resnet_aux_output_in_training_only():
    model = pixelwise.create_model("fcn_resnet50", num_classes=3, aux_loss=True)
    out = model(torch.randn(2, 3, 48, 48))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 48, 48)
    assert model.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 3, 48, 48)


def test_fcn_resnet_weights_errors(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="not a torchvision FCN"):
        pixelwise.create_model("fcn_resnet50", weights=str(path))
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = pixelwise.create_model("fcn_resnet50", backbone_weights=str(path))
    assert model.backbone.layer4[0].conv2.dilation == (2, 2)


def test_placement_rules():
    p = Placement().conv(3, 1, 1).conv(2, 2)
    assert p == Placement(2, 0.5)
    assert p.transposed(4, 2) == Placement(1, 0.5 - 1.5)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("pad100", [True, False])
def test_rarefied_fcn32s_has_input_size_and_loads_the_same_weights(output_stride, pad100):
    dense = _tiny("fcn32s", pad100=pad100, output_stride=output_stride).eval()
    dense.load_state_dict(_tiny("fcn32s", pad100=pad100).state_dict())  # rarefaction keeps every weight
    assert dense.backbone.placements["fc7"].stride == output_stride
    for h, w in ((32, 32), (45, 70)):
        with torch.no_grad():
            assert dense(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)
    with pytest.raises(ValueError, match="output_stride"):
        _tiny("fcn32s", output_stride=4)


def test_rarefied_backbone_equals_shift_and_stitch():
    # FCN section 3.2 on the real network: fc7 of the rarefied FCN-32s (pool5 stride removed, fc6
    # dilated) equals shift-and-stitch of the original pool5..fc7 layers over the conv5_3 map.
    from pixelwise.ops.shift_and_stitch import shift_and_stitch

    coarse = _tiny("fcn32s", pad100=True).eval().double()
    dense = _tiny("fcn32s", pad100=True, output_stride=16).eval().double()
    dense.load_state_dict(coarse.state_dict())
    x = torch.randn(1, 3, 90, 122, dtype=torch.float64)

    pool5 = [i for i, m in enumerate(coarse.backbone.features) if isinstance(m, torch.nn.MaxPool2d)][-1]

    def tail(b):
        return torch.nn.Sequential(*list(b.features)[pool5:], b.fc6, torch.nn.ReLU(), b.fc7, torch.nn.ReLU())

    with torch.no_grad():
        conv5 = coarse.backbone.features[:pool5](x)  # stride 16, before pool5
        conv5 = conv5[..., : conv5.shape[-2] // 2 * 2, : conv5.shape[-1] // 2 * 2]
        stitched = shift_and_stitch(tail(coarse.backbone), conv5, 2)
        rarefied = tail(dense.backbone)(conv5)
    h, w = rarefied.shape[-2:]
    torch.testing.assert_close(rarefied, stitched[..., :h, :w])
