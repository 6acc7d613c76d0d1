from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import box_iou as tv_box_iou, clip_boxes_to_image, remove_small_boxes

from pixelwise.ops.boxes import (
    BBOX_CLAMP, BOX_HEAD_WEIGHTS, RPN_WEIGHTS, box_iou, clip_boxes, decode, encode, match, remove_small,
    sample_balanced,
)


def random_boxes(n: int, size: float = 100.0, min_side: float = 1.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    return torch.cat([xy, xy + min_side + torch.rand(n, 2) * size], dim=1)


@pytest.mark.parametrize("weights", [RPN_WEIGHTS, BOX_HEAD_WEIGHTS])
def test_encode_decode_round_trip_and_torchvision(weights):
    boxes, proposals = random_boxes(200), random_boxes(200)
    deltas = encode(boxes, proposals, weights)
    assert deltas.shape == (200, 4)
    torch.testing.assert_close(decode(deltas, proposals, weights), boxes, rtol=0, atol=1e-3)
    coder = BoxCoder(weights)
    assert torch.equal(deltas, coder.encode_single(boxes, proposals))
    assert torch.equal(decode(deltas, proposals, weights), coder.decode_single(deltas, proposals))


@pytest.mark.parametrize("n, m, block", [(37, 500, 2 ** 18), (37, 500, 1000), (5, 7, 1), (0, 9, 64), (6, 0, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(n, m, block, dtype):
    torch.manual_seed(n + m)
    a, b = random_boxes(n).to(dtype), random_boxes(m).to(dtype)
    if n and m:
        a[0] = b[0]  # identical boxes: IoU 1
        a[1, 2:] = a[1, :2]  # zero area, like torchvision: 0 (and NaN against another zero-area box)
        b[1, 2:] = b[1, :2]
    iou = box_iou(a, b, block=block)
    assert iou.dtype == dtype and iou.shape == (n, m)
    torch.testing.assert_close(iou, tv_box_iou(a, b), rtol=0, atol=0, equal_nan=True)
    if n and m:
        assert iou[0, 0] == 1 and iou[1, 1].isnan() and iou[1, 2] == 0


def test_decode_per_class_deltas_matches_torchvision():
    proposals = random_boxes(50)
    deltas = torch.randn(50, 4 * 5)
    boxes = decode(deltas, proposals, BOX_HEAD_WEIGHTS)
    assert boxes.shape == (50, 20)
    assert torch.equal(boxes, BoxCoder(BOX_HEAD_WEIGHTS).decode_single(deltas, proposals))
    assert decode(torch.zeros(0, 8), torch.zeros(0, 4), BOX_HEAD_WEIGHTS).shape == (0, 8)


def test_decode_clamps_log_scale():
    assert BBOX_CLAMP == pytest.approx(math.log(1000 / 16))
    proposal = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 x 40, centre (20, 40)
    box = decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), proposal, RPN_WEIGHTS)[0]
    torch.testing.assert_close(box, torch.tensor([20 - 625.0, 40 - 1250.0, 20 + 625.0, 40 + 1250.0]))
    small = decode(torch.tensor([[0.0, 0.0, -1.0, 0.0]]), proposal, RPN_WEIGHTS)[0]
    torch.testing.assert_close(small[2] - small[0], torch.tensor(20 * math.exp(-1)))


def test_clip_and_remove_small_match_torchvision():
    boxes = random_boxes(100, size=80) - 10
    assert torch.equal(clip_boxes(boxes, (50, 70)), clip_boxes_to_image(boxes, (50, 70)))
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 4.9, 10], [0, 0, 10, 4], [1, 1, 6, 6.5]])
    assert remove_small(boxes, 5).tolist() == [0, 3]
    assert torch.equal(remove_small(boxes, 5), remove_small_boxes(boxes, 5))


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("trial", range(5))
def test_match_equals_torchvision_matcher_with_ties(allow_low_quality, trial):
    g = torch.Generator().manual_seed(trial)
    num_gt, num_pred = [(1, 30), (4, 200), (7, 50), (3, 3), (10, 400)][trial]
    iou = (torch.rand(num_gt, num_pred, generator=g) * 8).floor() / 10  # few levels: many ties
    iou[:, torch.rand(num_pred, generator=g) < 0.2] = 0.0
    expected = Matcher(0.7, 0.3, allow_low_quality)(iou)
    got = match(iou, 0.7, 0.3, allow_low_quality)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    assert set(got.unique().tolist()) <= set(range(-2, num_gt))


def test_match_by_hand():
    iou = torch.tensor([
        [0.9, 0.5, 0.1, 0.2, 0.2],
        [0.1, 0.6, 0.2, 0.2, 0.2],
    ])
    assert match(iou, 0.7, 0.3).tolist() == [0, -2, -1, -1, -1]
    # gt 1's best is 0.6 (pred 1): it gets its best gt (1) back. Preds 2-4 stay negative.
    assert match(iou, 0.7, 0.3, True).tolist() == [0, 1, -1, -1, -1]
    # A gt whose best overlap is shared by several predictions (a tie) gives them all a match.
    tie = torch.tensor([[0.2, 0.2, 0.1]])
    assert match(tie, 0.7, 0.3, True).tolist() == [0, 0, -1]
    assert match(torch.zeros(0, 4), 0.7, 0.3).tolist() == [-1] * 4
    with pytest.raises(ValueError, match="low=0.8"):
        match(iou, 0.7, 0.8)


def test_sample_balanced_counts_and_subsets():
    labels = torch.tensor([1] * 10 + [0] * 500 + [-1] * 30 + [3] * 200)[torch.randperm(740)]
    pos, neg = sample_balanced(labels, 512, 0.25)
    assert pos.dtype == neg.dtype == torch.bool
    assert pos.sum() == 128 and neg.sum() == 512 - 128
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    few = torch.tensor([1, 0, 0, -1, 2, 0])
    pos, neg = sample_balanced(few, 256, 0.5)
    assert pos.tolist() == [True, False, False, False, True, False]
    assert neg.tolist() == [False, True, True, False, False, True]


def test_sample_balanced_is_deterministic_and_matches_torchvision():
    labels = torch.randint(-1, 3, (1000,))
    a = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(3))
    b = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(3))
    c = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(7)
    ours = sample_balanced(labels, 64, 0.5)
    torch.manual_seed(7)
    (theirs_pos,), (theirs_neg,) = BalancedPositiveNegativeSampler(64, 0.5)([labels])
    assert torch.equal(ours[0], theirs_pos.bool()) and torch.equal(ours[1], theirs_neg.bool())
