from __future__ import annotations

import json

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from pixelwise.metrics import ConfusionMatrix


def hand_example(num_classes=3):
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 255, 255])
    preds = torch.tensor([0, 0, 1, 2, 1, 1, 0, 1, 0, 2])
    cm = ConfusionMatrix(num_classes, ignore_index=255)
    cm.update(preds[:5], targets[:5])  # two batches accumulate
    cm.update(preds[5:], targets[5:])
    return cm


def test_hand_example_exact_values():
    cm = hand_example()
    # Rows = truth: n = [[2, 1, 1], [1, 2, 0], [0, 1, 0]]; t = [4, 3, 1]; column sums [3, 4, 1].
    assert cm.matrix.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 0]]
    assert cm.matrix.dtype == torch.int64
    m = cm.compute()
    assert m["pixel_acc"] == pytest.approx(4 / 8)
    assert m["per_class_acc"] == pytest.approx([2 / 4, 2 / 3, 0.0])
    assert m["mean_acc"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    # IU = n_ii / (t_i + sum_j n_ji - n_ii): 2 / (4 + 3 - 2), 2 / (3 + 4 - 2), 0 / (1 + 1 - 0)
    assert m["per_class_iou"] == pytest.approx([0.4, 0.4, 0.0])
    assert m["miou"] == pytest.approx(0.8 / 3)
    assert m["fwiou"] == pytest.approx((4 * 0.4 + 3 * 0.4 + 1 * 0.0) / 8)
    assert m["dice"] == pytest.approx([4 / 7, 4 / 7, 0.0])
    assert m["mean_dice"] == pytest.approx(8 / 21)
    json.dumps(m, allow_nan=False)


def test_absent_classes_are_none_and_skipped():
    m = hand_example(num_classes=4).compute()  # class 3: neither in truth nor predicted
    assert m["per_class_iou"][3] is None and m["per_class_acc"][3] is None and m["dice"][3] is None
    assert m["miou"] == pytest.approx(0.8 / 3) and m["mean_acc"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    json.dumps(m, allow_nan=False)

    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 0, 0]))  # class 1 only predicted
    m = cm.compute()
    assert m["per_class_acc"] == [0.75, None] and m["mean_acc"] == 0.75
    assert m["per_class_iou"] == [0.75, 0.0] and m["miou"] == pytest.approx(0.375)
    assert m["fwiou"] == pytest.approx(0.75)


def test_reset_and_errors():
    cm = hand_example()
    cm.reset()
    assert cm.matrix.sum() == 0
    with pytest.raises(RuntimeError, match="no pixels"):
        cm.compute()
    with pytest.raises(ValueError, match=r"preds shape \(2, 3\) != targets shape \(2, 4\).*argmax"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets values span \[0, 7\]; expected \[0, 3\) or ignore_index=255"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"preds values span \[-1, 1\]"):
        cm.update(torch.tensor([-1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        cm.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("ignore_index", [255, 2])
def test_agrees_with_torchmetrics(ignore_index):
    k = 5
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, k, (4, 32, 32), generator=g)
    targets[torch.rand(targets.shape, generator=g) < 0.1] = ignore_index
    # Predictions right 60% of the time, otherwise random, so the scores are far from 0 and 1.
    noise = torch.randint(0, k, targets.shape, generator=g)
    preds = torch.where(torch.rand(targets.shape, generator=g) < 0.6, targets, noise)
    preds[preds == 255] = 0
    cm = ConfusionMatrix(k, ignore_index=ignore_index)
    cm.update(preds, targets)
    m = cm.compute()
    kw = dict(num_classes=k, ignore_index=ignore_index)
    assert m["miou"] == pytest.approx(MulticlassJaccardIndex(average="macro", **kw)(preds, targets).item(), rel=1e-5)
    per_class = MulticlassJaccardIndex(average="none", **kw)(preds, targets).tolist()
    f1 = MulticlassF1Score(average="none", **kw)(preds, targets).tolist()
    acc = MulticlassAccuracy(average="none", **kw)(preds, targets).tolist()
    present = [c for c in range(k) if c != ignore_index]
    assert [m["per_class_iou"][c] for c in present] == pytest.approx([per_class[c] for c in present], rel=1e-5)
    assert [m["dice"][c] for c in present] == pytest.approx([f1[c] for c in present], rel=1e-5)
    assert [m["per_class_acc"][c] for c in present] == pytest.approx([acc[c] for c in present], rel=1e-5)
    assert m["pixel_acc"] == pytest.approx(MulticlassAccuracy(average="micro", **kw)(preds, targets).item(), rel=1e-5)
    if ignore_index == 255:
        macro_acc = MulticlassAccuracy(average="macro", **kw)(preds, targets).item()
        macro_f1 = MulticlassF1Score(average="macro", **kw)(preds, targets).item()
        assert m["mean_acc"] == pytest.approx(macro_acc, rel=1e-5)
        assert m["mean_dice"] == pytest.approx(macro_f1, rel=1e-5)
    else:  # torchmetrics' macro accuracy / F1 average an in-range ignored class in as 0; we leave it out
        assert m["per_class_acc"][ignore_index] is None and m["per_class_iou"][ignore_index] is None
        assert m["mean_acc"] == pytest.approx(sum(acc[c] for c in present) / len(present), rel=1e-5)
        assert m["mean_dice"] == pytest.approx(sum(f1[c] for c in present) / len(present), rel=1e-5)
    assert 0.3 < m["miou"] < 0.8
