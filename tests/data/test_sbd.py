"""SBD read from its own MATLAB files, as `sbd`, `sbd_instances` and as VOC's data.sbd_root."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pixelwise.config import DataConfig
from pixelwise.data import DataError, build_dataset
from pixelwise.data.voc import VOCSegmentation


def _release(root, ids=("2008_000002", "2008_000003")):
    """benchmark.tgz's layout: benchmark_RELEASE/dataset/{img,cls,inst}, train.txt, val.txt."""
    dataset = root / "sbd" / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls", "inst"):
        (dataset / sub).mkdir(parents=True)
    for n, i in enumerate(ids):
        Image.fromarray(np.full((12, 16, 3), 40 * n, np.uint8)).save(dataset / "img" / f"{i}.jpg")
        classes = np.zeros((12, 16), np.uint8)
        classes[2:6, 2:8] = 15  # person
        classes[7:11, 9:15] = 7  # car
        savemat(dataset / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": classes, "Boundaries": np.zeros(1),
                                                         "CategoriesPresent": np.array([7, 15])}})
        instances = np.zeros((12, 16), np.uint8)
        instances[2:6, 2:8], instances[7:11, 9:15] = 1, 2
        savemat(dataset / "inst" / f"{i}.mat", {"GTinst": {"Segmentation": instances, "Boundaries": np.zeros(1),
                                                           "Categories": np.array([15, 7])}})
    (dataset / "train.txt").write_text(f"{ids[0]}\n")
    (dataset / "val.txt").write_text(f"{ids[1]}\n")
    return dataset


def test_sbd_reads_its_mat_files_in_both_forms(tmp_path):
    _release(tmp_path)
    semantic = build_dataset(DataConfig(dataset="sbd", root=str(tmp_path), mean=[0.5] * 3, std=[0.2] * 3), "train")
    mask = semantic[0][1]["mask"].numpy()
    assert len(semantic) == 1 and mask[3, 3] == 15 and mask[8, 10] == 7 and mask[0, 0] == 0
    instances = build_dataset(DataConfig(dataset="sbd_instances", root=str(tmp_path)), "val")
    _, target = instances[0]
    assert instances.class_names[15] == "person"
    assert target["labels"].tolist() == [15, 7] and target["boxes"].tolist() == [[2, 2, 8, 6], [9, 7, 15, 11]]


def test_voc_takes_sbd_release_as_sbd_root_and_a_bad_mat_file_is_named(tmp_path):
    dataset = _release(tmp_path)
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    for image in (dataset / "img").iterdir():
        (voc / "JPEGImages" / image.name).write_bytes(image.read_bytes())
    ds = VOCSegmentation(voc, split="train", sbd_root=tmp_path / "sbd")  # SBD's own train.txt and .mat labels
    assert ds.names == ["2008_000002"] and ds.mask_paths[0].suffix == ".mat"
    assert ds[0][1]["mask"].numpy()[3, 3] == 15
    savemat(dataset / "cls" / "2008_000002.mat", {"GTcls": {"Segmentation": np.full((12, 16), 30, np.uint8)}})
    with pytest.raises(DataError, match=r"2008_000002.mat' has class values \[30\] outside \[0, 21\)"):
        ds[0]
    (dataset / "cls" / "2008_000002.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="2008_000002.mat' cannot be read as a MATLAB file"):
        ds[0]
