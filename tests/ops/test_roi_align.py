"""pixelwise.ops.roi_align against torchvision.ops.roi_align: values, gradients, dtypes, layouts."""
from __future__ import annotations

import pytest
import torch
import torchvision

from pixelwise.ops import roi_align as module
from pixelwise.ops.roi_align import roi_align


def random_rois(k: int, batch: int, width: float, height: float, g: torch.Generator) -> torch.Tensor:
    """Boxes of every kind: inside, partly and wholly outside the map, tiny, empty and reversed."""
    xy = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 1.3 - 0.15 * torch.tensor([width, height])
    wh = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 0.6
    rois = torch.cat([torch.randint(0, batch, (k, 1), generator=g).float(), xy, xy + wh], 1)
    rois[0, 3:] = rois[0, 1:3]  # zero size
    rois[1, 1:] = torch.tensor([0.2, 0.3, 0.9, 0.6])  # under a pixel
    rois[2, 1:] = torch.tensor([-50.0, -40.0, -20.0, -10.0])  # outside
    rois[3, 1:] = torch.tensor([30.0, 30.0, 10.0, 12.0])  # reversed
    return rois


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_equals_torchvision_in_float32(sampling_ratio, aligned):
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(3, 6, 25, 33, generator=g)
    rois = random_rois(40, 3, 33 * 8, 25 * 8, g)
    for size in ((7, 7), (14, 14), (3, 5)):
        want = torchvision.ops.roi_align(x, rois, size, 1 / 8, sampling_ratio, aligned)
        got = roi_align(x, rois, size, 1 / 8, sampling_ratio, aligned)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradient_equals_torchvision(sampling_ratio):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 20, 30, generator=g, requires_grad=True)
    rois = random_rois(12, 2, 240, 160, g)
    want = torchvision.ops.roi_align(x, rois, 7, 1 / 8, sampling_ratio, True)
    grad_out = torch.randn(want.shape, generator=g)
    (want_grad,) = torch.autograd.grad(want, x, grad_out)
    (got_grad,) = torch.autograd.grad(roi_align(x, rois, 7, 1 / 8, sampling_ratio, True), x, grad_out)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-5)


def test_layouts_chunks_and_empty(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 16, 16, generator=g)
    rois = random_rois(30, 2, 128, 128, g)
    want = torchvision.ops.roi_align(x, rois, 7, 1 / 8, 0, False)
    got = roi_align(x.contiguous(memory_format=torch.channels_last), rois, 7, 1 / 8, 0, False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)  # ready for the mask head's convolutions
    monkeypatch.setattr(module, "MAX_ENTRIES", 7 * 7 * 4 * 4 * 3)  # three RoIs a chunk (two samples per axis at most)
    torch.testing.assert_close(roi_align(x, rois[4:], 7, 1 / 8, 0, False), want[4:], rtol=0, atol=1e-5)
    assert roi_align(x, rois[:0], (7, 5), 1 / 8, 2).shape == (0, 8, 7, 5)


def test_bf16_map_is_gathered_in_bf16_with_float32_coordinates():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 64, 64, generator=g).to(torch.bfloat16)
    rois = random_rois(50, 1, 512, 512, g)
    got = roi_align(x, rois, 7, 1 / 8, 2)
    assert got.dtype == torch.bfloat16
    want = torchvision.ops.roi_align(x.float(), rois, 7, 1 / 8, 2)
    torch.testing.assert_close(got.float(), want, rtol=2**-6, atol=2**-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"rois \(K, 5\) expected, got .*\(3, 4\)"):
        roi_align(torch.zeros(1, 2, 4, 4), torch.zeros(3, 4), 7)
