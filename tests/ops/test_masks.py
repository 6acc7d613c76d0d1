from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

from pixelwise.ops.boxes import clip_boxes
from pixelwise.ops.masks import _fma, mask_targets, paste_masks


def blob_masks(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, height, width) smooth random probabilities."""
    noise = torch.randn(n, 1, 6, 6, generator=generator) * 4
    return torch.sigmoid(F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False))[:, 0]


def random_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes of up to 250 pixels a side clipped to the image, as detections are before pasting."""
    side = torch.rand(n, 2, generator=generator) * 249 + 1
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width + 40.0, height + 40.0]) - 20 - side / 2
    return clip_boxes(torch.cat([xy, xy + side], dim=1), (height, width))


def test_mask_targets_equal_torchvision_project_masks_on_boxes():
    g = torch.Generator().manual_seed(0)
    gt_masks = blob_masks(130, 120, 160, g) > 0.5
    proposals = random_boxes(256, 120, 160, g)
    matched = torch.randint(0, 100, (256,), generator=g)  # gts 100..129 unmatched
    start = time.perf_counter()
    targets = mask_targets(gt_masks, matched, proposals)
    elapsed = time.perf_counter() - start
    assert targets.shape == (256, 28, 28) and targets.dtype == torch.float32
    assert torch.equal(targets, project_masks_on_boxes(gt_masks, proposals, matched, 28))
    assert 0 <= targets.min() and targets.max() <= 1 + 1e-6 and targets.max() > 0.999
    assert elapsed < 1.0, f"{elapsed:.3f} s for 256 targets"
    assert mask_targets(gt_masks, matched[:0], proposals[:0]).shape == (0, 28, 28)


@pytest.mark.parametrize("size", [(512, 512), (97, 131)])
def test_paste_masks_equal_torchvision(size):
    g = torch.Generator().manual_seed(sum(size))
    masks = blob_masks(100, 28, 28, g)
    boxes = random_boxes(100, *size, g)
    boxes[:3] = torch.tensor([[5.0, 5.0, 5.2, 5.3], [0.0, 3.0, 0.0, 50.0], [10.0, 10.0, 40.0, 10.0]])
    expected = paste_masks_in_image(masks[:, None], boxes, size)[:, 0]
    probs = paste_masks(masks, boxes, size, threshold=None)
    assert probs.shape == (100, *size) and probs.dtype == torch.float32
    assert torch.equal(probs, expected)
    binary = paste_masks(masks, boxes, size)
    assert binary.dtype == torch.bool and torch.equal(binary, expected >= 0.5)
    assert paste_masks(masks[:0], boxes[:0], size).shape == (0, *size)


def test_paste_masks_equal_torchvision_on_saturated_masks_and_kernel_boundaries():
    """Saturated masks (exact 0.5 ties at their edges) and tiny or negative values; boxes whose pasted
    h + w is around 128, where F.interpolate changes kernels, and whose size is M + 2 (a copy)."""
    g = torch.Generator().manual_seed(0)
    n = 120
    side = torch.rand(n, generator=g) * 110 + 1
    wh = torch.stack([side, 114 - side + torch.rand(n, generator=g) * 4], dim=1)
    wh[:10] = 28 + torch.rand(10, 2, generator=g) * 0.5
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = (blob_masks(n, 28, 28, g) > 0.5).float()
    masks[::3] = torch.rand(n // 3, 28, 28, generator=g) * 2.0 ** -130 - 2.0 ** -131
    for m in [masks, masks[:0]]:
        expected = paste_masks_in_image(m[:, None], boxes[:len(m)], (200, 210))[:, 0]
        assert torch.equal(paste_masks(m, boxes[:len(m)], (200, 210), threshold=None), expected)
        assert torch.equal(paste_masks(m, boxes[:len(m)], (200, 210)), expected >= 0.5)


def test_fma_rounds_once():
    """Ties of the float32 rounding after an inexact float64 sum: rounding twice would give 1 + 2 ** -22."""
    k = torch.arange(1, 100, dtype=torch.float64)
    a, b = (2.0 ** -12 * (1 + k * 2.0 ** -23)).float(), (2.0 ** -12 * (1 - k * 2.0 ** -23)).float()
    c = torch.full_like(a, 1 + 2.0 ** -23)  # exact a * b + c = 1 + 2 ** -23 + 2 ** -24 - k ** 2 * 2 ** -70
    assert torch.equal((a.double() * b.double() + c.double()).float(), torch.full_like(a, 1 + 2.0 ** -22))
    assert torch.equal(_fma(a, b, c), c)
    assert torch.equal(_fma(-a, b, -c), -c)


def best_times(fns, repeats: int = 3) -> list[float]:
    """Best wall time of each function, runs interleaved so that both see the same machine load."""
    times = [[] for _ in fns]
    for _ in range(repeats + 1):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [min(t[1:]) for t in times]


@pytest.mark.slow  # a timing comparison: unreliable on a loaded machine, so not in the default suite
def test_paste_masks_not_slower_than_torchvision():
    g = torch.Generator().manual_seed(0)
    masks = blob_masks(100, 28, 28, g)
    boxes = random_boxes(100, 512, 512, g)
    theirs, ours = best_times([
        lambda: paste_masks_in_image(masks[:, None], boxes, (512, 512))[:, 0] >= 0.5,
        lambda: paste_masks(masks, boxes, (512, 512)),
    ])
    print(f"paste 100 masks on 512x512: torchvision {theirs * 1e3:.1f} ms, ours {ours * 1e3:.1f} ms")
    assert ours < theirs, f"ours {ours * 1e3:.1f} ms, torchvision {theirs * 1e3:.1f} ms"
