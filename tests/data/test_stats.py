from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import CamVid, DataError, FolderDataset, class_frequencies, median_frequency_weights

# Two 2x2 masks, 4 classes (class 3 never present), 255 = void.
MASKS = [np.array([[0, 0], [1, 255]], dtype=np.uint8), np.array([[0, 2], [2, 2]], dtype=np.uint8)]


class InMemory(torch.utils.data.Dataset):
    """No mask_paths: class_frequencies falls back to dataset[i]."""

    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return torch.zeros(3, 2, 2), {"mask": torch.from_numpy(self.masks[i].astype(np.int64))}


def test_hand_worked_example(tmp_path):
    counts = class_frequencies(InMemory(MASKS), 4, 255, progress=False)
    assert counts.dtype == np.int64 and counts.tolist() == [[2, 1, 0, 0], [1, 0, 3, 0]]
    # freq_0 = 3 / (3 + 4), freq_1 = 1 / 3, freq_2 = 3 / 4 (non-void pixels of the images holding the class);
    # median 3/7; class 3 never appears -> 0.
    weights = median_frequency_weights(counts)
    np.testing.assert_allclose(weights, [1.0, (3 / 7) / (1 / 3), (3 / 7) / (3 / 4), 0.0])
    # The same counts read from mask files (no images decoded).
    for sub in ("images", "masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i, mask in enumerate(MASKS):
        Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "train" / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "train" / "masks" / f"{i}.png")
    folder = FolderDataset(tmp_path, split="train", num_classes=4)
    np.testing.assert_array_equal(class_frequencies(folder, 4, 255, progress=False), counts)


def test_bad_values_and_edge_cases():
    with pytest.raises(DataError, match=r"sample 1 has values \[2\] outside \[0, 2\)"):
        class_frequencies(InMemory(MASKS), 2, 255, progress=False)
    np.testing.assert_array_equal(median_frequency_weights(np.zeros((2, 3), dtype=np.int64)), [0, 0, 0])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        median_frequency_weights(np.ones(3))


def test_camvid_median_frequency(camvid_dir):
    train = CamVid(camvid_dir, split="train")
    counts = class_frequencies(train, train.num_classes, train.ignore_index, progress=False)
    assert counts.shape == (367, 11) and counts.sum() <= 367 * 360 * 480
    weights = median_frequency_weights(counts)
    assert np.isfinite(weights).all() and (weights > 0).all()
    names = train.class_names
    rare = [weights[names.index(c)] for c in ("pole", "sign_symbol", "bicyclist")]
    common = [weights[names.index(c)] for c in ("road", "sky")]
    assert min(rare) > max(common)
