from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from pixelwise.ops.anchors import C4_RATIOS, C4_SIZES, FPN_RATIOS, FPN_SIZES, cell_anchors, grid_anchors


def torchvision_anchors(sizes, ratios, image_size, feature_sizes):
    images = ImageList(torch.zeros(2, 3, *image_size), [image_size, (image_size[0] - 5, image_size[1] - 9)])
    features = [torch.zeros(2, 8, h, w) for h, w in feature_sizes]
    return AnchorGenerator(sizes, ratios)(images, features)


@pytest.mark.parametrize("config", ["fpn", "c4"])
def test_grid_anchors_equal_torchvision_anchor_generator(config):
    image_size = (128, 192)
    if config == "fpn":
        sizes, ratios, strides = FPN_SIZES, FPN_RATIOS, [4, 8, 16, 32, 64]
    else:
        sizes, ratios, strides = C4_SIZES, C4_RATIOS, [16]
    feature_sizes = [(image_size[0] // s, image_size[1] // s) for s in strides]
    ours = grid_anchors(sizes, ratios, feature_sizes, strides)
    for level, (h, w) in zip(ours, feature_sizes):
        assert level.shape == (h * w * 3 * len(sizes[0]), 4)
    theirs = torchvision_anchors(sizes, ratios, image_size, feature_sizes)
    assert torch.equal(torch.cat(ours), theirs[0]) and torch.equal(torch.cat(ours), theirs[1])
    if config == "c4":
        assert ours[0].shape == (8 * 12 * 15, 4)


def test_cell_anchors_by_hand():
    # size 32: ratio 1 -> 32 x 32; ratio 0.5 -> w = 32 / sqrt(.5) = 45.25, h = 22.63, halves rounded.
    assert cell_anchors([32], [0.5, 1.0, 2.0]).tolist() == [
        [-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0],
    ]
    # Ratio-major, then size.
    assert cell_anchors([32, 64], [1.0, 2.0])[:2].tolist() == [[-16.0, -16.0, 16.0, 16.0], [-32.0, -32.0, 32.0, 32.0]]


def test_grid_anchors_order_dtype_and_rectangular_stride():
    (anchors,) = grid_anchors([[32, 64]], [[1.0]], [(3, 4)], [(8, 16)], dtype=torch.float64)
    assert anchors.dtype == torch.float64 and anchors.shape == (3 * 4 * 2, 4)
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).reshape(3, 4, 2, 2)
    assert centres[2, 1, 1].tolist() == [16.0, 16.0]  # (x, y) = (1 * 16, 2 * 8)
    assert (anchors[1::2, 2] - anchors[1::2, 0] == 64).all()
    with pytest.raises(ValueError, match="one of each per level"):
        grid_anchors(FPN_SIZES, FPN_RATIOS, [(4, 4)], [4])
