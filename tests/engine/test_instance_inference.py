"""Mask R-CNN inference on many and on large images: batches of one size, sliced inference merged across tiles."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pixelwise
from pixelwise.engine.tasks.instance import InstancePredictor, detect
from pixelwise.errors import ConfigError
from pixelwise.ops.merge import merge_detections


class Bright(nn.Module):
    """Detects each bright rectangle (pixels > 0.5) of each image it is given, found by its rows and columns."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, images, targets=None, detect=None):
        self.calls.append([tuple(im.shape) for im in images])
        out = []
        for im in images:
            fg = im[0] > 0.5
            boxes, masks = [], []
            for rows, cols in _rectangles(fg):
                m = torch.zeros_like(fg)
                m[rows[0]:rows[1], cols[0]:cols[1]] = True
                masks.append(m)
                boxes.append([cols[0], rows[0], cols[1], rows[1]])
            n = len(boxes)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                        "labels": torch.ones(n, dtype=torch.int64), "scores": torch.linspace(0.9, 0.8, n),
                        "masks": torch.stack(masks) if masks else torch.zeros(0, *fg.shape, dtype=torch.bool)})
        return {"detections": out}


def _runs(line: torch.Tensor) -> list[tuple[int, int]]:
    padded = torch.cat([torch.tensor([False]), line, torch.tensor([False])]).int()
    edges = torch.where(padded.diff() != 0)[0].tolist()
    return list(zip(edges[::2], edges[1::2]))


def _rectangles(fg: torch.Tensor):
    """Axis-aligned rectangles that do not share rows or columns."""
    return [((r0, r1), c) for r0, r1 in _runs(fg.any(1)) for c in _runs(fg[r0:r1].any(0))]


def picture(*rects, size=(96, 128)) -> torch.Tensor:
    image = torch.full((3, *size), 0.1)
    for y1, x1, y2, x2 in rects:
        image[:, y1:y2, x1:x2] = 0.9
    return image


def test_an_object_cut_by_a_tile_border_is_merged_into_one_detection():
    # 64-pixel tiles 24 apart (overlap 40) along the width 128: windows at x = 0, 24, 48, 64. The object at x 50..70
    # is whole in the windows at 24 and 48 and cut at 64 (its left part is outside), so three pieces merge into one.
    image = picture((10, 50, 30, 70), (60, 5, 80, 20))
    model = Bright()
    whole = detect(model, [image], torch.device("cpu"))[0]
    sliced = detect(model, [image], torch.device("cpu"), tile=64, overlap=40, batch_size=3)[0]
    assert [len(c) for c in model.calls[1:]] == [3, 3, 3, 3]  # 3 rows (y 0, 24, 32) x 4 columns, 3 windows at a time
    assert all(shape == (3, 64, 64) for c in model.calls[1:] for shape in c)
    order = torch.argsort(sliced["boxes"][:, 0])
    torch.testing.assert_close(sliced["boxes"][order], whole["boxes"][torch.argsort(whole["boxes"][:, 0])])
    assert torch.equal(sliced["masks"][order].sum((1, 2)), torch.tensor([300, 400]))
    assert sliced["masks"].shape == (2, 96, 128)
    # without overlap the two halves of a cut object do not overlap: nothing merges them (overlap must exceed objects)
    cut = detect(model, [picture((10, 54, 30, 74))], torch.device("cpu"), tile=64, overlap=0)[0]
    assert len(cut["boxes"]) == 2


def test_merging_needs_the_same_label_and_an_overlap_of_the_smaller():
    masks = torch.zeros(4, 40, 40, dtype=torch.bool)
    masks[0, 0:20, 0:20] = True  # whole
    masks[1, 0:20, 10:20] = True  # a part of it
    masks[2, 0:20, 10:20] = True  # the same part, another label
    masks[3, 0:20, 19:30] = True  # a neighbour touching it by one column
    boxes = torch.tensor([[0.0, 0, 20, 20], [10, 0, 20, 20], [10, 0, 20, 20], [19, 0, 30, 20]])
    d = {"boxes": boxes, "labels": torch.tensor([1, 1, 2, 1]), "scores": torch.tensor([0.5, 0.9, 0.8, 0.7]),
         "masks": masks}
    got = merge_detections(d)
    assert got["labels"].tolist() == [1, 2, 1] and got["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    torch.testing.assert_close(got["boxes"][0], torch.tensor([0.0, 0, 20, 20]))  # the union, at the best score
    assert got["masks"][0].sum() == 400 and got["masks"][2].sum() == 220
    empty = merge_detections({k: v[:0] for k, v in d.items()})
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 40, 40)


def test_a_batch_of_images_gives_what_one_at_a_time_gives():
    torch.manual_seed(0)
    model = pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=1, norm="gn", frozen_bn=False, min_size=64,
                                   max_size=96, box_score_thresh=0.0, detections_per_img=10).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 64, 80), torch.rand(3, 70, 64), torch.rand(3, 64, 80)]
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    one = [InstancePredictor(model, torch.device("cpu"))(im) for im in images]
    calls.clear()
    many = InstancePredictor(model, torch.device("cpu"), batch_size=2).many(images)
    assert calls == [2, 1, 1]  # images of one size together, up to batch_size
    for a, b in zip(one, many):
        assert len(a["boxes"]) > 0 and torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"infer.overlap must be in \[0, tile=64\), got 64"):
        InstancePredictor(model, torch.device("cpu"), tile=64, overlap=64)


def test_tile_scale_image_keeps_each_window_at_the_whole_images_scale():
    """infer.tile_scale: "window" magnifies each window to the model's input size (SAHI); "image" resizes it by
    the factor the whole image gets, the scale a model trained on whole images saw."""
    torch.manual_seed(0)
    model = pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=1, norm="gn", frozen_bn=False, min_size=64,
                                   max_size=96, box_score_thresh=0.0, detections_per_img=10).eval()
    image = torch.rand(3, 96, 128)
    sizes = []
    model.rpn.register_forward_pre_hook(lambda m, args: sizes.append(args[1]))
    assert model.image_scale((96, 128)) == pytest.approx(64 / 96)
    detect(model, [image], torch.device("cpu"))
    assert sizes[-1] == [(64, 85)]  # the whole image, shorter side to min_size
    sizes.clear()
    detect(model, [image], torch.device("cpu"), tile=64, overlap=32, batch_size=8)
    assert sizes == [[(64, 64)] * 6]  # 2 x 3 windows, each magnified to min_size
    sizes.clear()
    found = InstancePredictor(model, torch.device("cpu"), tile=64, overlap=32, batch_size=8, tile_scale="image")(image)
    assert sizes == [[(42, 42)] * 6]  # 64 * 2/3: the whole image's scale
    assert found["masks"].shape[1:] == (96, 128)
    with pytest.raises(ConfigError, match="infer.tile_scale must be one of window, image, got 'model'"):
        InstancePredictor(model, torch.device("cpu"), tile=64, tile_scale="model")
