"""train.loss: focal, Dice and Lovasz-softmax against their formulas and segmentation_models_pytorch's
implementations on the same inputs, ignore values and class weights, and the weighted sums a recipe asks for."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixelwise.losses import cross_entropy, dice_loss, lovasz_softmax

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")


def _sample(b=2, k=4, h=9, w=11, ignored=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, k, h, w, generator=g)).requires_grad_()
    targets = torch.randint(0, k - 1, (b, h, w), generator=g)  # the last class is absent
    targets[torch.rand(b, h, w, generator=g) < ignored] = 255
    return logits, targets


@pytest.mark.parametrize("weighted", [False, True])
def test_dice_is_smps_multiclass_dice_with_ignored_pixels_and_class_weights(weighted):
    logits, targets = _sample()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0]) if weighted else None
    reference = smp_losses.DiceLoss("multiclass", ignore_index=255,
                                    class_weights=weights.tolist() if weighted else None)(logits, targets)
    got = dice_loss(logits, targets, ignore_index=255, class_weights=weights)
    torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-6)
    grad, = torch.autograd.grad(got, logits)
    want, = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_dice_follows_its_formula_on_a_hand_made_case():
    # Two pixels, two classes, one ignored pixel: p = softmax, class 0 at pixel 0, class 1 at pixel 1.
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])
    targets = torch.tensor([[[0, 1, 255]]])
    p = F.softmax(logits[0, :, 0, :2], dim=0)
    dice0 = 2 * p[0, 0] / (p[0].sum() + 1)
    dice1 = 2 * p[1, 1] / (p[1].sum() + 1)
    torch.testing.assert_close(dice_loss(logits, targets), 1 - (dice0 + dice1) / 2)


def test_lovasz_is_smps_multiclass_lovasz_softmax():
    for seed in range(3):
        logits, targets = _sample(seed=seed)
        reference = smp_losses.LovaszLoss("multiclass", per_image=False, ignore_index=255)(logits, targets)
        got = lovasz_softmax(logits, targets, ignore_index=255)
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-6)
        grad, = torch.autograd.grad(got, logits)
        want, = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_lovasz_is_zero_for_a_perfect_prediction_and_the_jaccard_loss_for_a_hard_one():
    targets = torch.tensor([[[0, 0, 1, 1]]])
    perfect = F.one_hot(targets, 2).permute(0, 3, 1, 2).float() * 50
    assert lovasz_softmax(perfect, targets).item() < 1e-6
    # One-hot (hard) probabilities: the Lovasz extension equals the Jaccard loss itself (Berman et al., section 3).
    wrong = F.one_hot(torch.tensor([[[0, 1, 1, 1]]]), 2).permute(0, 3, 1, 2).float() * 50
    jaccard = torch.tensor([1 - 1 / 2, 1 - 2 / 3]).mean()  # class 0: 1 of 2 pixels; class 1: 2 of 3
    torch.testing.assert_close(lovasz_softmax(wrong, targets), jaccard, atol=1e-5, rtol=0)


def test_focal_is_its_formula_and_cross_entropy_at_gamma_zero():
    logits, targets = _sample()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    valid = targets != 255
    log_p = F.log_softmax(logits, dim=1).gather(1, targets.clamp(max=3).unsqueeze(1)).squeeze(1)
    want = (-(1 - log_p.exp()) ** 2 * log_p * weights[targets.clamp(max=3)])[valid].sum() / valid.sum()
    torch.testing.assert_close(cross_entropy(logits, targets, gamma=2.0, class_weights=weights), want)
    torch.testing.assert_close(cross_entropy(logits, targets, gamma=0.0), cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="gamma=-1"):
        cross_entropy(logits, targets, gamma=-1)


@pytest.mark.parametrize("loss", [dice_loss, lovasz_softmax])
def test_region_losses_ignore_every_ignored_pixel_and_refuse_unknown_labels(loss):
    logits, targets = _sample()
    mask = (targets == 255).unsqueeze(1).expand_as(logits)  # logits at ignored pixels do not matter
    changed = torch.where(mask, torch.randn(logits.shape) * 10, logits.detach())
    torch.testing.assert_close(loss(logits.detach(), targets), loss(changed, targets))
    everything = torch.full_like(targets, 255)
    zero = loss(logits, everything)
    assert zero.item() == 0 and zero.requires_grad
    with pytest.raises(ValueError, match=r"target values \[7\] are outside \[0, 4\)"):
        loss(logits, torch.where(targets == 0, 7, targets))


def test_train_loss_is_a_weighted_sum_of_named_terms_and_refuses_what_is_not(tmp_path):
    from helpers.synthetic import semantic_config, semantic_data

    from pixelwise.config import ConfigError, apply_override, check_ranges
    from pixelwise.engine import train
    from pixelwise.engine.run import build_run

    cfg = semantic_config(tmp_path / "run", "train.loss={ce: 1.0, dice: 0.5, lovasz: 0.25, focal: 2.0}",
                          "train.max_steps=2", "train.val_every=2")
    run = build_run(cfg, datasets=semantic_data())
    run.task.prepare(run.train_ds, torch.device("cpu"), progress=False)
    images, targets = run.task.collate([run.train_ds[0], run.train_ds[1]])
    run.model.eval()  # the same logits twice (no dropout)
    terms = run.task.loss(run.model, (images, targets))
    assert set(terms) == {"ce", "dice", "lovasz", "focal"}
    logits = run.model(images)
    mask = targets["mask"]
    torch.testing.assert_close(terms["dice"], 0.5 * dice_loss(logits, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["lovasz"], 0.25 * lovasz_softmax(logits, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["focal"], 2.0 * cross_entropy(logits, mask, gamma=2.0), atol=1e-5, rtol=1e-5)
    train(cfg, datasets=semantic_data(), progress=False)  # trains with it
    for bad in ("train.loss=dize", "train.loss={ce: 1, dice: -1}", "train.loss={ce: 0}", "train.focal_gamma=-2"):
        cfg = semantic_config(tmp_path / "bad")
        apply_override(cfg, bad)
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            check_ranges(cfg)


def test_mask_rcnn_refuses_a_semantic_loss(tmp_path):
    from helpers.synthetic import instance_config, instance_data

    from pixelwise.config import ConfigError
    from pixelwise.engine.run import build_run

    with pytest.raises(ConfigError, match="train.loss='dice'.*Mask R-CNN has its own"):
        build_run(instance_config(tmp_path / "run", "train.loss=dice"), datasets=instance_data())
