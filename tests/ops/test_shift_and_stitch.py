from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.ops.shift_and_stitch import rarefy, rarefy_kernel, shift_and_stitch


def pooled_net() -> nn.Sequential:
    """Valid convs and 2x2 pools, total stride 4, receptive field R = 1 + 2 + 1 + 2*2 + 1*2 = 10."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 1),
    ).double().eval()


def strided_net() -> nn.Sequential:
    """Valid stride-2 convs instead of pools, total stride 4, R = 1 + 2 + 2*2 = 7."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 3, 1),
    ).double().eval()


def padded_net() -> nn.Sequential:
    """Padded layers and an overlapping 3x3/2 pool, total stride 4, P = 1 + 1 + 1*2 = 4, R = 1 + 2 + 2 + 2*2 = 9."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.1), nn.Dropout2d()),
        nn.Conv2d(4, 3, 1),
    ).double().eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
@torch.no_grad()
def test_rarefied_pooled_net_equals_shift_and_stitch(pad_mode):
    net = pooled_net()
    images = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    dense = rarefy(net)(images)
    stitched = shift_and_stitch(net, images, 4, pad_mode=pad_mode)
    assert dense.shape == (1, 3, 32 - 10 + 1, 32 - 10 + 1)
    assert stitched.shape == (1, 3, 24, 24)  # coarse output 6 x 6
    # Valid layers: every rarefied pixel's receptive field is inside the image.
    torch.testing.assert_close(dense, stitched[..., :23, :23], atol=1e-5, rtol=0)
    assert net[2].stride == 2 and net[3].dilation == (1, 1)  # the original is untouched


@torch.no_grad()
def test_rarefied_strided_conv_net_equals_shift_and_stitch():
    net = strided_net()
    images = torch.randn(2, 2, 32, 32, dtype=torch.float64)
    dense = rarefy(net)(images)
    # batch_size 3 mixes shifts and images within a forward pass.
    stitched = shift_and_stitch(net, images, 4, batch_size=3, progress=True)
    assert dense.shape == (2, 3, 26, 26) and stitched.shape == (2, 3, 28, 28)
    torch.testing.assert_close(dense, stitched[..., :26, :26], atol=1e-5, rtol=0)
    rarefied = rarefy(net)
    assert rarefied[2].stride == (1, 1) and rarefied[2].dilation == (2, 2) and rarefied[4].dilation == (4, 4)


@torch.no_grad()
def test_rarefied_padded_net_equals_shift_and_stitch_inside_the_image():
    net = padded_net()
    images = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    dense = rarefy(net)(images)
    stitched = shift_and_stitch(net, images, 4)
    # Both are (H + 2P - R + 1) = H here; they agree where the window [i - P, i - P + R - 1] is inside [0, H).
    assert dense.shape == stitched.shape == (1, 3, 32, 32)
    inside = slice(4, 32 - 9 + 4 + 1)
    torch.testing.assert_close(dense[..., inside, inside], stitched[..., inside, inside], atol=1e-5, rtol=0)


def test_rarefy_kernel_is_the_papers_formula():
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    expected = torch.tensor([[1.0, 0, 2.0], [0, 0, 0], [3.0, 0, 4.0]])
    torch.testing.assert_close(rarefy_kernel(weight, 2), expected)
    weight = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    images = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    assert rarefy_kernel(weight, (2, 3)).shape == (5, 2, 5, 7)
    dilated = F.conv2d(images, weight, dilation=(2, 3))
    torch.testing.assert_close(F.conv2d(images, rarefy_kernel(weight, (2, 3))), dilated)


@torch.no_grad()
@pytest.mark.parametrize("make_net", [pooled_net, strided_net, padded_net])
def test_materialised_kernels_equal_dilation(make_net):
    net = make_net()
    images = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    materialised = rarefy(net, materialise=True)
    convs = [m for m in materialised.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.dilation == (1, 1) for c in convs) and convs[1].kernel_size == (5, 5)
    torch.testing.assert_close(materialised(images), rarefy(net)(images), atol=1e-5, rtol=0)


@torch.no_grad()
def test_shift_and_stitch_factor_one_is_the_net():
    net = pooled_net()
    images = torch.randn(2, 2, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(shift_and_stitch(net, images, 1), net(images))


@torch.no_grad()
@pytest.mark.parametrize("make_net", [pooled_net, strided_net, padded_net])
def test_shift_and_stitch_coarse_pixels_are_the_net(make_net):
    net = make_net()
    images = torch.randn(2, 2, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(shift_and_stitch(net, images, 4)[..., ::4, ::4], net(images))


@pytest.mark.parametrize(
    "shape, factor, kwargs, match",
    [
        ((1, 2, 32, 32), 0, {}, r"factor=0; expected an integer >= 1"),
        ((1, 2, 32, 32), 2.0, {}, r"factor=2.0"),
        ((2, 32, 32), 4, {}, r"\(2, 32, 32\) \(3-D\); expected \(B, C, H, W\)"),
        ((1, 2, 30, 32), 4, {}, r"height 30 is not divisible by factor=4; nearest valid sizes are 28 and 32"),
        ((1, 2, 32, 3), 4, {}, r"width 3 is not divisible by factor=4; nearest valid size is 4"),
        ((1, 2, 32, 32), 4, {"batch_size": 0}, r"batch_size=0"),
    ],
)
def test_shift_and_stitch_rejects_bad_inputs(shape, factor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shift_and_stitch(pooled_net(), torch.zeros(shape, dtype=torch.float64), factor, **kwargs)


@pytest.mark.parametrize(
    "net, match",
    [
        (nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Linear(4, 3)), r"layer '2' \(Linear"),
        (nn.Sequential(nn.Conv2d(2, 4, 3), nn.Upsample(scale_factor=2)), r"layer '1' \(Upsample"),
        (
            nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3)), nn.Sequential(nn.ReLU(), nn.AvgPool2d(2))),
            r"'1.1' \(AvgPool2d",
        ),
        (nn.Linear(4, 3), r"'<root>' \(Linear"),
        (nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 2, padding="same")), r"'1' .*padding='same'"),
    ],
)
def test_rarefy_refuses_layers_it_cannot_handle(net, match):
    with pytest.raises(ValueError, match=match):
        rarefy(net)
