from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import label
from skimage.metrics import adapted_rand_error, variation_of_information

from pixelwise.metrics import cells_from_membrane, isbi_scores, mean_isbi_scores


def read_png(path):
    with Image.open(path) as f:
        return np.array(f)


def grid(size=64, step=16):
    """Membrane lines every `step` pixels: (size / step)^2 square cells of (step - 1)^2 pixels."""
    yy, xx = np.mgrid[:size, :size]
    return (yy % step == 0) | (xx % step == 0)


def test_perfect_prediction_scores_zero():
    truth = grid()
    s = isbi_scores(truth.copy(), truth)
    assert s["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert s["rand_precision"] == pytest.approx(1.0) and s["rand_recall"] == pytest.approx(1.0)
    assert s["vi_split"] == pytest.approx(0.0, abs=1e-12) and s["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert s["vi"] == pytest.approx(0.0, abs=1e-12) and s["pixel_error"] == 0.0


def test_merge_is_worse_than_split():
    truth = grid()
    merged = truth.copy()
    merged[1:16, 16] = False  # remove the wall between the first two cells
    split = truth.copy()
    split[33:48, 40] = True  # a spurious wall through one cell
    m, s = isbi_scores(merged, truth), isbi_scores(split, truth)
    assert m["pixel_error"] == s["pixel_error"] == pytest.approx(15 / 64**2)
    assert m["adapted_rand_error"] > s["adapted_rand_error"] > 0
    assert m["vi_merge"] > s["vi_merge"] and m["vi_merge"] > 0
    assert s["vi_split"] > m["vi_split"]
    # skimage names the split score "precision" and the merge score "recall".
    assert m["rand_recall"] < 1 and m["rand_precision"] == pytest.approx(1.0)
    assert s["rand_precision"] < 1 and s["rand_recall"] == pytest.approx(1.0)
    # Merge by hand: 16 cells of 225 true pixels; the merged segment holds 450 true pixels plus
    # 15 former wall pixels that are ignored (membrane in the truth).
    # sum p_ij^2 - N = 16 * (225^2 - 225); pred: 14 * (225^2 - 225) + 450^2 - 450.
    same = 16 * (225**2 - 225)
    pred_pairs = 14 * (225**2 - 225) + 450**2 - 450
    # (by hand on the maps as drawn: thin=False)
    m = isbi_scores(merged, truth, thin=False)
    assert m["rand_recall"] == pytest.approx(same / pred_pairs)
    assert m["adapted_rand_error"] == pytest.approx(1 - 2 * same / (same + pred_pairs))


def test_agrees_with_skimage_called_directly():
    rng = np.random.default_rng(0)
    truth = grid(96, 12)
    pred = truth ^ (rng.random(truth.shape) < 0.03)
    pred = ndimage.binary_opening(pred | ndimage.binary_dilation(truth, iterations=1) & (rng.random(truth.shape) < 0.5))
    t, p = label(~truth, connectivity=1), label(~pred, connectivity=1)
    are, prec, rec = adapted_rand_error(t, p)  # default ignore_labels=(0,)
    split, merge = variation_of_information(t, p, ignore_labels=(0,))
    s = isbi_scores(pred, truth, thin=False)
    assert s["adapted_rand_error"] == pytest.approx(are) and 0.01 < are < 0.99
    assert s["rand_precision"] == pytest.approx(prec) and s["rand_recall"] == pytest.approx(rec)
    assert s["vi_split"] == pytest.approx(split) and s["vi_merge"] == pytest.approx(merge)
    assert s["vi"] == pytest.approx(split + merge)
    assert s["pixel_error"] == pytest.approx(np.mean(pred != truth))


def test_cells_use_four_connectivity():
    membrane = np.array([[0, 1], [1, 0]], dtype=bool)  # two cells touching only at a corner
    assert cells_from_membrane(membrane).max() == 2


def test_real_slice(isbi_dir):
    truth = read_png(isbi_dir / "train" / "label" / "00.png") == 0
    thick = ndimage.binary_dilation(truth)
    s = isbi_scores(thick, truth)
    assert 0 < s["pixel_error"] < 0.3
    assert s["adapted_rand_error"] > 0 and np.isfinite(s["vi"])


def test_mean_and_errors():
    a = {"adapted_rand_error": 0.1, "vi": 1.0}
    b = {"adapted_rand_error": 0.3, "vi": 2.0}
    assert mean_isbi_scores([a, b]) == pytest.approx({"adapted_rand_error": 0.2, "vi": 1.5})
    with pytest.raises(ValueError, match="no slices"):
        mean_isbi_scores([])
    with pytest.raises(ValueError, match="slice 1 has keys"):
        mean_isbi_scores([a, {"vi": 1.0}])
    with pytest.raises(ValueError, match=r"dtype uint8.*bool.*label == 0"):
        isbi_scores(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        isbi_scores(np.zeros((4, 4), dtype=bool), np.zeros((4, 5), dtype=bool))


def test_thinning_makes_scores_independent_of_membrane_width():
    # The challenge's VRand(thinned): a prediction that draws the true membranes 5 pixels wide splits
    # the image into the same cells, so it scores (almost) perfectly once membranes are thinned.
    from scipy import ndimage

    truth = np.zeros((64, 64), bool)
    truth[:, 20] = truth[:, 41] = truth[31, :] = True
    thick = ndimage.binary_dilation(truth, iterations=2)
    thinned = isbi_scores(thick, truth)
    raw = isbi_scores(thick, truth, thin=False)
    assert thinned["adapted_rand_error"] < 0.02 < raw["adapted_rand_error"]
    assert thinned["pixel_error"] == raw["pixel_error"] > 0.1


def test_challenge_sweep_finds_the_threshold_the_argmax_misses():
    from pixelwise.metrics.isbi import SWEEP, challenge_scores

    truth = grid()
    perfect = challenge_scores([truth.astype(float)], [truth])
    assert perfect["vrand_sweep"] == pytest.approx(1.0) and perfect["vinfo_sweep"] == pytest.approx(1.0)
    # An under-confident net: p(membrane) = 0.35 on the membranes, 0 elsewhere. Its argmax draws no membrane at all
    # (one cell), but thresholds from 0.7 up (membrane where 1 - p <= t) recover every cell.
    timid = np.where(truth, 0.35, 0.0)
    argmax = isbi_scores(timid >= 0.5, truth)
    assert 1 - argmax["adapted_rand_error"] < 0.2
    swept = challenge_scores([timid], [truth])
    assert swept["vrand_sweep"] == pytest.approx(1.0) and swept["vrand_sweep_threshold"] == 0.7
    assert len(swept["vrand_by_threshold"]) == len(SWEEP) == 11 and swept["vrand_by_threshold"][6] < 0.2
    # Two slices: the score at each threshold is their mean.
    both = challenge_scores([truth.astype(float), timid], [truth, truth])
    assert both["vrand_by_threshold"][0] == pytest.approx((1 + swept["vrand_by_threshold"][0]) / 2)


def test_vinfo_is_one_for_identical_and_zero_for_one_merged_segment():
    from pixelwise.metrics.isbi import cells_from_membrane, thin_membrane, vinfo

    cells = cells_from_membrane(thin_membrane(grid()))
    assert vinfo(cells, cells) == pytest.approx(1.0)
    assert vinfo(cells, np.ones_like(cells)) == pytest.approx(0.0)  # every true cell merged: no information
    relabelled = np.where(cells > 0, cells.max() + 1 - cells, 0)  # names do not matter
    assert vinfo(cells, relabelled) == pytest.approx(1.0)


def test_challenge_scores_refuse_maps_that_are_not_probabilities():
    from pixelwise.metrics.isbi import challenge_scores

    truth = grid()
    with pytest.raises(ValueError, match=r"slice 0: probability map .* expected values in \[0, 1\]"):
        challenge_scores([truth * 255.0], [truth])
    with pytest.raises(ValueError, match="2 probability maps and 1 true"):
        challenge_scores([truth * 1.0, truth * 1.0], [truth])
