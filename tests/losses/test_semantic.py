from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixelwise.losses import cross_entropy


def _sample(b: int = 2, k: int = 3, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    targets = torch.randint(0, k, (b, h, w), generator=g)
    return logits, targets


def test_matches_torch_cross_entropy_with_unit_weights() -> None:
    logits, targets = _sample()
    expected = F.cross_entropy(logits, targets)
    assert torch.allclose(cross_entropy(logits, targets), expected, atol=1e-6)
    ones = torch.ones(targets.shape)
    got = cross_entropy(logits, targets, weight_map=ones, class_weights=torch.ones(3))
    assert torch.allclose(got, expected, atol=1e-6)


def test_weight_map_scales_each_term_exactly() -> None:
    logits, targets = _sample()
    per_pixel = F.cross_entropy(logits, targets, reduction="none")
    weight = torch.rand(targets.shape) * 5
    weight[0, :4] = 0.0
    got = cross_entropy(logits, targets, weight_map=weight)
    assert torch.allclose(got, (per_pixel * weight).mean(), atol=1e-6)
    assert torch.allclose(cross_entropy(logits, targets, weight_map=3 * weight), 3 * got, rtol=1e-6)
    # A weight on a single pixel: the loss is exactly that pixel's term over the pixel count.
    one = torch.zeros(targets.shape)
    one[1, 2, 5] = 7.0
    single = cross_entropy(logits, targets, weight_map=one)
    assert torch.allclose(single, 7.0 * per_pixel[1, 2, 5] / targets.numel(), atol=1e-7)


def test_class_weights_normalised_by_pixel_count() -> None:
    logits, targets = _sample()
    class_weights = torch.tensor([0.5, 2.0, 4.0])
    got = cross_entropy(logits, targets, class_weights=class_weights)
    expected = F.cross_entropy(logits, targets, weight=class_weights, reduction="sum") / targets.numel()
    assert torch.allclose(got, expected, atol=1e-6)
    # Documented difference from torch's "mean", which divides by the sum of the weights.
    assert not torch.allclose(got, F.cross_entropy(logits, targets, weight=class_weights), atol=1e-3)


def test_ignore_index_is_excluded() -> None:
    logits, targets = _sample()
    targets = targets.clone()
    targets[0, :3] = 255
    weight = torch.ones(targets.shape)
    weight[targets == 255] = float("nan")  # must not leak from ignored pixels
    got = cross_entropy(logits, targets, weight_map=weight)
    expected = F.cross_entropy(logits, targets, ignore_index=255)
    assert torch.allclose(got, expected, atol=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad[0, :, :3]) == 0
    assert torch.count_nonzero(logits.grad[1]) > 0
    logits2, targets2 = _sample()
    targets2 = targets2.masked_fill(targets2 == 1, -100)
    assert torch.allclose(
        cross_entropy(logits2, targets2, ignore_index=-100), F.cross_entropy(logits2, targets2), atol=1e-6
    )


def test_all_ignored_gives_zero_with_grad() -> None:
    logits, targets = _sample()
    loss = cross_entropy(logits, torch.full_like(targets, 255))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_shape_errors_name_the_shapes() -> None:
    logits, targets = _sample()
    with pytest.raises(ValueError, match=r"\(2, 8, 9\).*\(2, 3, 8, 8\)"):
        cross_entropy(logits, torch.zeros(2, 8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        cross_entropy(logits[0], targets)
    with pytest.raises(ValueError, match=r"weight_map of shape \(2, 8\)"):
        cross_entropy(logits, targets, weight_map=torch.ones(2, 8))
    with pytest.raises(ValueError, match=r"class_weights of shape \(2,\).*\(3,\)"):
        cross_entropy(logits, targets, class_weights=torch.ones(2))
    with pytest.raises(ValueError, match="float32"):
        cross_entropy(logits, targets.float())


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_out_of_range_targets_are_named(bad: int) -> None:
    logits, targets = _sample()
    targets = targets.clone()
    targets[1, 4, 4] = bad
    with pytest.raises(ValueError, match=rf"values {bad} are outside \[0, 3\).*ignore_index=255"):
        cross_entropy(logits, targets)


def test_float32_under_autocast() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 1)
    x = torch.randn(2, 4, 8, 8)
    targets = torch.randint(0, 3, (2, 8, 8))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(logits.float(), targets)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def _known_terms(b: int = 2, h: int = 16, w: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-class logits whose per-pixel loss is the pixel's index counted from 1: -log softmax = v when
    the target logit is 0 and the other is log(e^v - 1)."""
    values = torch.arange(1, b * h * w + 1, dtype=torch.float64).reshape(b, h, w)
    logits = torch.zeros(b, 2, h, w, dtype=torch.float64)
    logits[:, 1] = torch.log(torch.expm1(values))
    return logits.float().requires_grad_(), torch.zeros(b, h, w, dtype=torch.long), values.float()


def test_known_terms() -> None:
    logits, targets, values = _known_terms()
    torch.testing.assert_close(F.cross_entropy(logits, targets, reduction="none"), values)


def test_sample_p_one_is_the_full_loss() -> None:
    logits, targets = _sample()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(cross_entropy(logits, targets, sample_p=1.0, generator=g), cross_entropy(logits, targets))
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert torch.equal(cross_entropy(logits, targets, sample_p=None), cross_entropy(logits, targets))


def test_loss_sampling_keeps_about_half_and_averages_the_kept() -> None:
    logits, targets, values = _known_terms()
    targets[0, 0] = 255  # an ignored row is never counted, kept or not
    valid = targets != 255
    loss = cross_entropy(logits, targets, sample_p=0.5, generator=torch.Generator().manual_seed(1))
    keep = (torch.rand(targets.shape, generator=torch.Generator().manual_seed(1)) < 0.5) & valid
    n_valid = int(valid.sum())
    assert abs(int(keep.sum()) - n_valid / 2) < 4 * (n_valid * 0.25) ** 0.5
    torch.testing.assert_close(loss, values[keep].mean())
    assert not torch.allclose(loss, values[valid].mean(), rtol=1e-3)
    total = cross_entropy(logits, targets, sample_p=0.5, generator=torch.Generator().manual_seed(1), reduction="sum")
    torch.testing.assert_close(total, values[keep].sum())
    loss.backward()
    grad = logits.grad.permute(0, 2, 3, 1)  # (B, H, W, K)
    assert torch.count_nonzero(grad[~keep]) == 0
    assert (grad[keep].abs().sum(-1) > 0).all()


def test_loss_sampling_nothing_kept_gives_zero_with_grad() -> None:
    logits, targets = _sample()
    loss = cross_entropy(logits, targets, sample_p=1e-12, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_sample_p_out_of_range(bad: float) -> None:
    logits, targets = _sample()
    with pytest.raises(ValueError, match=r"sample_p=.*expected the probability of keeping a pixel's term, in \(0, 1\]"):
        cross_entropy(logits, targets, sample_p=bad)


def test_sum_reduction_is_mean_times_valid_pixels() -> None:
    logits, targets = _sample()
    targets = targets.clone()
    targets[1, 2:4] = 255
    weight = torch.rand(targets.shape) * 3
    class_weights = torch.tensor([0.5, 2.0, 4.0])
    kwargs = dict(weight_map=weight, class_weights=class_weights)
    mean = cross_entropy(logits, targets, **kwargs)
    total = cross_entropy(logits, targets, reduction="sum", **kwargs)
    torch.testing.assert_close(total, mean * int((targets != 255).sum()))
    with pytest.raises(ValueError, match=r"reduction='none'.*'mean' or 'sum'"):
        cross_entropy(logits, targets, reduction="none")
