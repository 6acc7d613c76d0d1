"""Datasets returning (image, target) with torchvision tv_tensors, and `build_dataset` from a DataConfig.

Each dataset module registers itself (pixelwise.data.registry): importing this package registers them all.
"""
from __future__ import annotations

from typing import Callable

from pixelwise.data.camvid import CamVid
from pixelwise.data.coco import CocoInstances, coco_files, instance_fields
from pixelwise.data.folder import FolderDataset, default_palette
from pixelwise.data.io import DataError, as_image, read_image, read_mask
from pixelwise.data.isbi2012 import ISBI2012, parse_indices
from pixelwise.data.isbi_instances import ISBIInstances, to_coco
from pixelwise.data.paths import DatasetNotFoundError, dataset_dir, resolve_root
from pixelwise.data.registry import dataset_entry, list_datasets
from pixelwise.data.stats import class_frequencies, median_frequency_weights
from pixelwise.data.voc import VOCSegmentation
from pixelwise.data import annotation_tools  # noqa: F401  (registers labelme, yolo, cvat and their _instances)
from pixelwise.data import ade20k, cell_tracking, cityscapes, gatech, nyud, pascal_context, sbd, siftflow  # noqa: F401
from pixelwise.errors import ConfigError

__all__ = [
    "CamVid", "CocoInstances", "FolderDataset", "ISBI2012", "ISBIInstances", "VOCSegmentation", "DataError",
    "DatasetNotFoundError", "DATASETS", "as_image", "build_dataset", "check_data_settings", "class_frequencies",
    "coco_files", "dataset_dir", "dataset_entry", "dataset_meta", "default_palette", "instance_fields",
    "list_datasets", "median_frequency_weights", "parse_indices", "read_image", "read_mask", "resolve_root",
    "split_spec", "to_coco",
]

DATASETS = tuple(list_datasets())


def dataset_meta(data_cfg) -> dict:
    """Classes, palette and channels of the configured dataset, without reading any of its files.

    num_classes counts the classes a model predicts: for the instance datasets the object classes
    (background excluded, as Mask R-CNN's num_classes); COCO's is None, since only its JSON knows it.
    """
    return dataset_entry(data_cfg.dataset).meta(data_cfg)


def split_spec(data_cfg, split: str) -> str:
    """The dataset split that `split` names: "train" / "val" are the recipe's data.train_split / data.val_split
    (or the dataset's defaults); any other value is a split of the dataset itself ("test", "0-4", ...)."""
    if split not in ("train", "val"):
        return split
    spec = data_cfg.train_split if split == "train" else data_cfg.val_split
    return spec if spec is not None else dataset_entry(data_cfg.dataset).splits[split == "val"]


def build_dataset(data_cfg, split: str, transforms: Callable | None = None):
    """The dataset described by `data_cfg` for `split` (see split_spec), cut to its first data_cfg.limit
    images if set."""
    entry = dataset_entry(data_cfg.dataset)
    check_data_settings(data_cfg)
    dataset = entry.build(data_cfg, split, split_spec(data_cfg, split))
    dataset.transforms = transforms
    limit = getattr(data_cfg, "limit", None)
    if limit is not None and limit < len(dataset):
        n = len(dataset)
        for attr in ("indices", "image_paths", "label_paths", "mask_paths", "names", "image_ids", "sizes"):
            items = getattr(dataset, attr, None)
            if isinstance(items, list) and len(items) == n:
                setattr(dataset, attr, items[:limit])
    return dataset


def check_data_settings(data_cfg) -> None:
    """Refuse dataset-specific settings given for a dataset that does not read them."""
    from pixelwise.config import DataConfig

    defaults, entry = DataConfig(), dataset_entry(data_cfg.dataset)
    for key in sorted({k for name in DATASETS for k in dataset_entry(name).reads}):
        value = getattr(data_cfg, key, None)
        if value != getattr(defaults, key) and key not in entry.reads:
            users = [name for name in DATASETS if key in dataset_entry(name).reads]
            raise ConfigError(f"data.{key}={value!r} is read only by the {' and '.join(users)} dataset"
                              f"{'s' if len(users) > 1 else ''}; data.dataset={data_cfg.dataset!r} would ignore it. "
                              "Remove the setting")
