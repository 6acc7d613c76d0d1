from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pixelwise.ops.weight_map import BORDER_TOLERANCE, border_cutoff, class_balance_weights, unet_weight_map


def read_png(path):
    with Image.open(path) as f:
        return np.array(f)


def brute_force_weight_map(instances, mask, num_classes=2, w0=10.0, sigma=5.0, balance=True):
    """Eq. 2 with one full-image distance transform per object and no cutoff."""
    ids = [i for i in np.unique(instances) if i > 0]
    far = [np.full(instances.shape, np.inf)] * 2  # fewer than two objects: no border term
    dist = np.stack([ndimage.distance_transform_edt(instances != i) for i in ids] + far)
    dist.sort(axis=0)
    border = np.where(instances == 0, w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2)), 0.0)
    wc = class_balance_weights(mask, num_classes)[mask] if balance else 1.0
    return wc + border


def test_class_balance_weights_by_hand():
    mask = np.array([[0, 0, 0, 1, 255]])
    # N = 4 counted pixels, 2 classes present: w_0 = 4 / (2 * 3), w_1 = 4 / (2 * 1), class 2 absent -> 0.
    w = class_balance_weights(mask, 3, ignore_index=255)
    np.testing.assert_allclose(w, [4 / 6, 2.0, 0.0], rtol=1e-6)
    assert w.dtype == np.float32
    # Mean weight over counted pixels is 1.
    assert w[mask[mask != 255]].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[255\]"):
        class_balance_weights(mask, 3)


def test_two_cells_four_pixels_apart_by_hand():
    # Cells of 3 pixels, a gap of 4 background pixels: every gap pixel has d1 + d2 = 5
    # (e.g. column 3: 1 to the left cell, 4 to the right one).
    instances = np.array([[1, 1, 1, 0, 0, 0, 0, 2, 2, 2]])
    w = unet_weight_map(instances, w0=10.0, sigma=5.0)
    # Balance: N = 10, 6 object and 4 background pixels -> 10 / (2 * 6) and 10 / (2 * 4).
    gap = 10 / 8 + 10.0 * math.exp(-(5**2) / (2 * 5**2))  # 1.25 + 10 e^-0.5 = 7.3153
    expected = [10 / 12] * 3 + [gap] * 4 + [10 / 12] * 3
    np.testing.assert_allclose(w[0], expected, rtol=1e-6)
    assert gap == pytest.approx(7.31530660)


def test_three_cells_in_a_row_by_hand():
    # Columns: 0 = cell 1, 3 = cell 2, 8 = cell 3.
    instances = np.array([[1, 0, 0, 2, 0, 0, 0, 0, 3]])
    w = unet_weight_map(instances, w0=10.0, sigma=2.0, balance=False)
    # d1 + d2: col 1 -> 1 + 2, col 2 -> 2 + 1, cols 4..7 -> (1 + 4), (2 + 3), (3 + 2), (4 + 1).
    near, far = 1 + 10 * math.exp(-9 / 8), 1 + 10 * math.exp(-25 / 8)
    np.testing.assert_allclose(w[0], [1, near, near, 1, far, far, far, far, 1], rtol=1e-6)


def test_diagonal_cells_use_euclidean_distance():
    instances = np.zeros((3, 3), dtype=np.int64)
    instances[0, 0], instances[2, 2] = 1, 2
    w = unet_weight_map(instances, w0=1.0, sigma=2.0, balance=False)
    # (1,1): sqrt2 + sqrt2 -> 8; (0,2): 2 + 2 -> 16; (0,1): 1 + sqrt5 -> 6 + 2 sqrt5.
    term = lambda s2: math.exp(-s2 / 8)  # noqa: E731
    expected = np.array(
        [
            [1, 1 + term(6 + 2 * math.sqrt(5)), 1 + term(16)],
            [1 + term(6 + 2 * math.sqrt(5)), 1 + term(8), 1 + term(6 + 2 * math.sqrt(5))],
            [1 + term(16), 1 + term(6 + 2 * math.sqrt(5)), 1],
        ]
    )
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_single_cell_has_no_border_term_and_ignore_gets_zero():
    instances = np.zeros((6, 6), dtype=np.int64)
    instances[1:3, 1:3] = 7
    mask = (instances == 0).astype(np.int64)
    mask[5, 5] = 255
    w = unet_weight_map(instances, mask, ignore_index=255)
    wc = class_balance_weights(mask, 2, ignore_index=255)
    assert w[5, 5] == 0.0
    np.testing.assert_allclose(w[0, 0], wc[1])
    np.testing.assert_allclose(w[1, 1], wc[0])


def random_instances(rng, size=64, n=14):
    """Voronoi-like cells with 1-2 pixel background borders and a few gaps."""
    seeds = rng.integers(0, size, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    d = np.stack([np.hypot(yy - r, xx - c) for r, c in seeds])
    order = np.sort(d, axis=0)
    inst = d.argmin(axis=0) + 1
    inst[order[1] - order[0] < rng.uniform(0.5, 3.0)] = 0
    return inst


def random_blobs(rng, size=64, n=10):
    """Small separated discs: many background pixels have their second-nearest cell beyond the cutoff."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), dtype=np.int64)
    for k in range(1, n + 1):
        r, c = rng.integers(0, size, 2)
        inst[np.hypot(yy - r, xx - c) <= rng.uniform(1.5, 4.0)] = k
    return inst


@pytest.mark.parametrize(
    "make,seed,sigma",
    [
        (random_instances, 0, 5.0),
        (random_instances, 1, 3.0),
        (random_instances, 2, 8.0),
        (random_blobs, 0, 5.0),
        (random_blobs, 1, 3.0),
    ],
)
def test_agrees_with_brute_force(make, seed, sigma):
    rng = np.random.default_rng(seed)
    inst = make(rng)
    mask = (inst == 0).astype(np.int64)
    fast = unet_weight_map(inst, mask, w0=10.0, sigma=sigma)
    slow = brute_force_weight_map(inst, mask, w0=10.0, sigma=sigma)
    border = slow - class_balance_weights(mask, 2)[mask]
    assert border.max() > 4  # the border term is really exercised
    assert np.abs(fast - slow).max() <= BORDER_TOLERANCE * 10.0
    # Where the two nearest cells are within the cutoff the result is exact.
    close = border > 10.0 * math.exp(-border_cutoff(sigma) ** 2 / (2 * sigma**2))
    np.testing.assert_allclose(fast[close], slow[close], rtol=1e-5)


def test_sparse_ids_give_the_same_map():
    rng = np.random.default_rng(3)
    inst = random_instances(rng, size=40, n=8)
    sparse = np.where(inst > 0, inst * 10**7, 0)
    np.testing.assert_array_equal(unet_weight_map(sparse), unet_weight_map(inst))


def test_bad_inputs():
    with pytest.raises(ValueError, match="dtype float"):
        unet_weight_map(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="expected \\(H, W\\)"):
        unet_weight_map(np.zeros((1, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="mask shape"):
        unet_weight_map(np.zeros((4, 4), dtype=np.int64), np.zeros((4, 5), dtype=np.int64))


def test_border_cutoff_value():
    # sigma * sqrt(2 ln 1000) = 5 * 3.7169 = 18.58 -> 19
    assert border_cutoff(5.0) == 19
    assert 10 * math.exp(-(19**2) / 50) < 1e-3 * 10


def test_speed_and_values_on_an_isbi_slice(isbi_dir):
    label = read_png(isbi_dir / "train" / "label" / "00.png")
    cells, n = ndimage.label(label == 255)
    assert n > 50
    mask = (label == 0).astype(np.int64)
    unet_weight_map(cells, mask)  # warm-up
    start = time.perf_counter()
    w = unet_weight_map(cells, mask, w0=10.0, sigma=5.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"{elapsed:.3f} s per 512x512 slice"
    wc = class_balance_weights(mask, 2)
    np.testing.assert_allclose(w[cells > 0], wc[0])
    membrane = w[cells == 0]
    assert membrane.min() >= wc[1] - 1e-6
    assert wc[1] + 5 < membrane.max() <= wc[1] + 10.0
