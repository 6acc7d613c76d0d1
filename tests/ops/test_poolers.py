from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from pixelwise.ops.poolers import map_levels, roi_features


def random_boxes(n: int, image: int, generator: torch.Generator) -> torch.Tensor:
    side = torch.exp(torch.empty(n, 2).uniform_(1, 6.2, generator=generator))  # 2.7 .. 490 px
    xy = torch.rand(n, 2, generator=generator) * (image - side)
    return torch.cat([xy, xy + side], dim=1)


def test_roi_align_on_grid_box_is_hand_computed_average():
    feature = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    out = roi_features([feature], [box], output_size=2, spatial_scales=[1.0], sampling_ratio=2)
    # Bin (i, j) covers [2i, 2i+2] x [2j, 2j+2]; its 2x2 samples sit at half-integers, where bilinear
    # interpolation is the mean of the 4 surrounding pixels.
    at_half_integers = F.avg_pool2d(feature, 2, stride=1)
    expected = F.avg_pool2d(at_half_integers[..., :4, :4], 2)
    torch.testing.assert_close(out, expected)


def test_roi_pool_and_roi_warp_quantise_roi_align_does_not():
    feature = torch.randn(1, 4, 20, 20)
    box = torch.tensor([[32.0, 48.0, 160.0, 224.0]])  # (2, 3, 10, 14) at scale 1/16
    shifted = box + 0.3
    outs = {}
    for method in ("roi_align", "roi_pool", "roi_warp"):
        a, b = (roi_features([feature], [x], method=method, output_size=7, spatial_scales=[1 / 16]) for x in (box, shifted))
        assert a.shape == (1, 4, 7, 7)
        outs[method] = (a, b)
    assert torch.equal(*outs["roi_pool"]) and torch.equal(*outs["roi_warp"])
    assert not torch.allclose(*outs["roi_align"])
    # On a box already on the grid, RoIWarp is RoIAlign; off the grid it is RoIAlign of the rounded box.
    assert torch.equal(outs["roi_warp"][0], outs["roi_align"][0])
    odd = torch.tensor([[39.0, 41.0, 170.0, 200.0]])  # 2.44, 2.56, 10.6, 12.5 -> 2, 3, 11, 13 (half away)
    warp = roi_features([feature], [odd], method="roi_warp", output_size=7, spatial_scales=[1 / 16])
    rounded = torch.tensor([[0, 32.0, 48.0, 176.0, 208.0]])
    torch.testing.assert_close(warp, roi_align(feature, rounded, 7, 1 / 16, 2, False), rtol=0, atol=1e-5)
    pool = [roi_features([feature], [b], method="roi_pool", output_size=7, spatial_scales=[1 / 16]) for b in (odd, rounded[:, 1:])]
    assert torch.equal(*pool)  # the same rounding as RoIPool's, 12.5 -> 13 included


def test_map_levels_fpn_eq1():
    boxes = torch.tensor([[0, 0, 224.0, 224], [10, 10, 122, 122], [0, 0, 448, 448], [0, 0, 8, 8], [0, 0, 2000, 1000]])
    assert map_levels(boxes, 2, 5).tolist() == [4, 3, 5, 2, 5]
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(500, 800, g)
    assert torch.equal(map_levels(boxes, 2, 5) - 2, LevelMapper(2, 5)([boxes[:300], boxes[300:]]))


def multi_level_inputs(method: str):
    g = torch.Generator().manual_seed(1)
    strides = [4, 8, 16, 32]
    features = [torch.randn(2, 5, 512 // s, 512 // s, generator=g) for s in strides]
    boxes = [random_boxes(40, 512, g), random_boxes(25, 512, g)]
    boxes[0][7] = torch.tensor([10.0, 20.0, 500.0, 490.0])  # level 5
    out = roi_features(features, boxes, method=method, output_size=(7, 5), spatial_scales=[1 / s for s in strides])
    return features, boxes, strides, out


def test_multi_level_roi_align_equals_torchvision_multiscale_roi_align():
    features, boxes, _, out = multi_level_inputs("roi_align")
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], (7, 5), sampling_ratio=2)
    expected = pooler(OrderedDict((str(i), f) for i, f in enumerate(features)), boxes, [(512, 512), (500, 480)])
    assert out.shape == (65, 5, 7, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)  # pixelwise.ops.roi_align sums in another order
    assert set(map_levels(torch.cat(boxes), 2, 5).tolist()) == {2, 3, 4, 5}


@pytest.mark.parametrize("method", ["roi_align", "roi_pool", "roi_warp"])
def test_multi_level_output_follows_input_box_order(method):
    features, boxes, strides, out = multi_level_inputs(method)
    levels = map_levels(torch.cat(boxes), 2, 5) - 2
    image = [i for i, b in enumerate(boxes) for _ in range(len(b))]
    for k, (box, level) in enumerate(zip(torch.cat(boxes), levels.tolist())):
        feature = features[level][image[k] : image[k] + 1]
        single = roi_features([feature], [box[None]], method=method, output_size=(7, 5), spatial_scales=[1 / strides[level]])
        assert torch.equal(out[k], single[0])


def test_single_level_c4_and_errors():
    feature = torch.randn(2, 3, 16, 16)
    boxes = [torch.tensor([[0.0, 0, 100, 100]]), torch.zeros(0, 4)]
    out = roi_features([feature], boxes, output_size=14, spatial_scales=[1 / 16], sampling_ratio=0)
    assert out.shape == (1, 3, 14, 14)
    v2 = roi_features([feature], boxes, output_size=14, spatial_scales=[1 / 16], aligned=True)
    torch.testing.assert_close(v2, roi_align(feature, boxes, 14, 1 / 16, 2, aligned=True), rtol=0, atol=1e-5)
    pyramid = [torch.randn(2, 3, 64 // 2**k, 64 // 2**k) for k in range(3)]
    empty = roi_features(pyramid, [torch.zeros(0, 4)] * 2, output_size=7, spatial_scales=[1 / 4, 1 / 8, 1 / 16])
    assert empty.shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="method='roi_max'"):
        roi_features([feature], boxes, method="roi_max", output_size=7, spatial_scales=[1 / 16])
    with pytest.raises(ValueError, match="consecutive powers"):
        roi_features([feature, feature], boxes, output_size=7, spatial_scales=[1 / 4, 1 / 16])
    with pytest.raises(ValueError, match="batch of 2"):
        roi_features([feature], boxes[:1], output_size=7, spatial_scales=[1 / 16])


@pytest.mark.parametrize("method", ["roi_align", "roi_pool", "roi_warp"])
def test_every_method_runs_on_bf16_features_under_autocast(method):
    # The fast path (train.precision=bf16) hands the poolers bf16 feature maps; torchvision's roi_pool has no bf16
    # CPU kernel, and boxes rounded to bf16 would move by pixels. RoIPool: the float32 pooling of the same bf16
    # values with float32 boxes, exactly. RoIAlign / RoIWarp gather in bf16 with float32 coordinates: the float32
    # result to bf16's precision (weights and sums rounded to 8 significant bits).
    features, boxes, strides, _ = multi_level_inputs(method)
    low = [f.to(torch.bfloat16) for f in features]
    device = features[0].device.type
    with torch.autocast(device, dtype=torch.bfloat16):
        out = roi_features(low, boxes, method=method, output_size=(7, 5), spatial_scales=[1 / s for s in strides])
    want = roi_features([f.float() for f in low], boxes, method=method, output_size=(7, 5),
                        spatial_scales=[1 / s for s in strides])
    if method == "roi_pool":
        assert out.dtype == torch.bfloat16 and torch.equal(out.float(), want)
    else:
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), want, atol=2**-6, rtol=2**-6)


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (0, False), (2, True)])
def test_roi_align_for_a_graph_equals_the_eager_pooler_on_boxes_inside_the_image(sampling_ratio, aligned):
    """RoIPooler.in_graph (one torchvision roi_align over the levels side by side, each with a replicated border)
    gives the eager pooler's values for boxes inside the image, as Mask R-CNN's proposals and detections are:
    including boxes on the image's edges and corners, whose last samples torchvision clamps to the last row."""
    from pixelwise.ops.poolers import RoIPooler, as_rois

    g = torch.Generator().manual_seed(3)
    strides, (h, w) = [4, 8, 16, 32], (512, 704)  # not square: the levels' widths and heights differ
    features = [torch.randn(2, 6, h // s, w // s, generator=g) for s in strides]
    boxes = [random_boxes(60, 512, g).clamp(max=512) * torch.tensor([w / 512, 1, w / 512, 1]) for _ in range(2)]
    edges = torch.tensor([[0.0, 0.0, w, h], [w - 9.0, h - 7.0, w, h], [0.0, h - 40.0, 30.0, h], [w - 300.0, 0, w, 200]])
    boxes[1] = torch.cat([boxes[1], edges])
    pooler = RoIPooler("roi_align", 7, [1 / s for s in strides], sampling_ratio, aligned)
    rois = as_rois(boxes)
    assert set(map_levels(rois[:, 1:], 2, 5).tolist()) == {2, 3, 4, 5}
    # The same arithmetic: equal in float64. In float32 a coordinate moved onto the atlas (hundreds of pixels to the
    # right) keeps fewer bits: samples ~3e-5 px apart.
    wide = [f.double() for f in features]
    torch.testing.assert_close(pooler.in_graph(wide, rois.double()), pooler(wide, rois.double()), rtol=0, atol=1e-10)
    torch.testing.assert_close(pooler.in_graph(features, rois), pooler(features, rois), rtol=0, atol=2e-4)
    one = RoIPooler("roi_align", 14, [1 / 16], sampling_ratio, aligned)  # C4: one level, no atlas
    torch.testing.assert_close(one.in_graph(features[2:3], rois), one(features[2:3], rois), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="only roi_align"):
        RoIPooler("roi_pool", 7, [1 / 16]).in_graph(features[2:3], rois)
