"""Datasets returning (image, target) with torchvision tv_tensors, and `build_dataset` from a DataConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pixelwise.data.camvid import CamVid
from pixelwise.data.coco import CocoInstances, instance_fields
from pixelwise.data.folder import FolderDataset, default_palette
from pixelwise.data.io import DataError, read_image, read_mask
from pixelwise.errors import ConfigError
from pixelwise.data.isbi2012 import ISBI2012, parse_indices
from pixelwise.data.isbi_instances import ISBIInstances, to_coco
from pixelwise.data.paths import INSTANCE_DATASETS, DatasetNotFoundError, dataset_dir, resolve_root
from pixelwise.data.stats import class_frequencies, median_frequency_weights
from pixelwise.data.voc import VOCSegmentation

__all__ = [
    "CamVid", "CocoInstances", "FolderDataset", "ISBI2012", "ISBIInstances", "VOCSegmentation", "DataError",
    "DatasetNotFoundError", "DATASETS", "INSTANCE_DATASETS", "instance_fields", "to_coco",
    "build_dataset", "check_data_settings", "class_frequencies", "split_spec", "dataset_dir", "dataset_meta", "default_palette", "median_frequency_weights",
    "parse_indices", "read_image", "read_mask", "resolve_root",
]

DATASETS = ("isbi2012", "camvid", "folder", "voc", *INSTANCE_DATASETS)
# Splits used when data.train_split / data.val_split are not set.
DEFAULT_SPLITS = {
    "isbi2012": ("0-24", "25-29"), "camvid": ("train", "val"), "voc": ("train", "val"), "folder": ("train", "val"),
    "isbi_instances": ("0-24", "25-29"), "coco": ("train2017", "val2017"),
}
_CLASSES = {"isbi2012": ISBI2012, "camvid": CamVid, "voc": VOCSegmentation}


def dataset_meta(data_cfg) -> dict:
    """Classes, palette and channels of the configured dataset, without reading any of its files.

    For the instance datasets num_classes counts the object classes (background excluded, as Mask
    R-CNN's num_classes); COCO's is None, since only its JSON knows it.
    """
    if data_cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset={data_cfg.dataset!r} is unknown; expected one of {', '.join(DATASETS)}")
    if data_cfg.dataset in INSTANCE_DATASETS:
        isbi = data_cfg.dataset == "isbi_instances"
        return {"num_classes": 1 if isbi else None, "class_names": ISBIInstances.class_names if isbi else None,
                "palette": None, "in_channels": 3, "ignore_index": None, "label_note": None}
    if data_cfg.dataset == "folder":
        k = data_cfg.num_classes or 2
        return {"num_classes": k, "class_names": [f"class{i}" for i in range(k)], "palette": default_palette(k),
                "in_channels": len(data_cfg.mean), "ignore_index": data_cfg.ignore_index, "label_note": None}
    cls = _CLASSES[data_cfg.dataset]
    return {"num_classes": cls.num_classes, "class_names": list(cls.class_names), "palette": list(cls.palette),
            "in_channels": cls.in_channels, "ignore_index": cls.ignore_index,
            "label_note": getattr(cls, "label_note", None)}


def split_spec(data_cfg, split: str) -> str:
    """The dataset split that `split` names: "train" / "val" are the recipe's data.train_split / data.val_split
    (or the dataset's defaults); any other value is a split of the dataset itself ("test", "0-4", ...)."""
    if split not in ("train", "val"):
        return split
    spec = data_cfg.train_split if split == "train" else data_cfg.val_split
    return spec if spec is not None else DEFAULT_SPLITS[data_cfg.dataset][split == "val"]


def build_dataset(data_cfg, split: str, transforms: Callable | None = None):
    """The dataset described by `data_cfg` for `split` (see split_spec), cut to its first data_cfg.limit
    images if set."""
    dataset = _build_dataset(data_cfg, split, transforms)
    limit = getattr(data_cfg, "limit", None)
    if limit is not None and limit < len(dataset):
        n = len(dataset)
        for attr in ("indices", "image_paths", "label_paths", "mask_paths", "names", "image_ids", "sizes"):
            items = getattr(dataset, attr, None)
            if isinstance(items, list) and len(items) == n:
                setattr(dataset, attr, items[:limit])
    return dataset


def coco_files(root: Path | None, spec: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of a COCO split: "NAME" is COCO 2017's annotations/instances_NAME.json
    with images in NAME/; "FILE.json:IMAGE_FOLDER" names both (relative to the dataset folder, or absolute)."""
    if ":" in spec:
        ann, images = spec.split(":", 1)
        return tuple(Path(p).expanduser() if root is None or Path(p).expanduser().is_absolute() else root / p
                     for p in (ann, images))
    return root / "annotations" / f"instances_{spec}.json", root / spec


def _absolute_coco(spec: str) -> bool:
    return ":" in spec and all(Path(p).expanduser().is_absolute() for p in spec.split(":", 1))


# Settings read by some datasets only; set on another, they would be silently ignored.
_USED_BY = {"num_classes": ("folder",), "ignore_index": ("folder",), "label_map": ("camvid", "voc", "folder"),
            "sbd_root": ("voc",), "skip_invalid": ("coco",)}


def check_data_settings(data_cfg) -> None:
    """Refuse dataset-specific settings given for a dataset that does not read them."""
    from pixelwise.config import DataConfig

    defaults = DataConfig()
    for key, users in _USED_BY.items():
        value = getattr(data_cfg, key, None)
        if value != getattr(defaults, key) and data_cfg.dataset not in users:
            raise ConfigError(f"data.{key}={value!r} is read only by the {' and '.join(users)} dataset"
                              f"{'s' if len(users) > 1 else ''}; data.dataset={data_cfg.dataset!r} would ignore it. "
                              "Remove the setting")
    if data_cfg.dataset in INSTANCE_DATASETS and (data_cfg.mean != defaults.mean or data_cfg.std != defaults.std):
        raise ConfigError(f"data.mean / data.std are not used with the instance dataset {data_cfg.dataset!r}: Mask "
                          "R-CNN normalises its input inside the model, with ImageNet's mean and std; remove them")


def _build_dataset(data_cfg, split: str, transforms: Callable | None = None):
    """The dataset described by `data_cfg` (a pixelwise.config.DataConfig) for `split`.

    U-Net weight maps (data_cfg.weight_map, w0, sigma) are made for the train split of a two-class
    dataset. VOC's train split takes SBD's extra labels from data_cfg.sbd_root. The folder dataset takes
    num_classes and ignore_index from data_cfg, and its channel count from len(data_cfg.mean).
    """
    name = data_cfg.dataset
    if name not in DATASETS:
        raise ConfigError(f"data.dataset={name!r} is unknown; expected one of {', '.join(DATASETS)}")
    check_data_settings(data_cfg)
    spec = split_spec(data_cfg, split)
    key = f"data.{split}_split" if split in ("train", "val") else f"split {split!r}"
    weight_map = data_cfg.weight_map and split == "train"
    if data_cfg.weight_map and name in INSTANCE_DATASETS:
        raise ConfigError(f"data.weight_map=true is for semantic models; {name!r} is an instance dataset")
    if name == "coco":
        root = None if _absolute_coco(spec) else dataset_dir(data_cfg)
        return CocoInstances(*coco_files(root, spec), transforms=transforms, skip_invalid=data_cfg.skip_invalid)
    root = dataset_dir(data_cfg)
    if name in ("isbi2012", "isbi_instances"):
        try:
            indices = parse_indices(spec)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        if name == "isbi_instances":  # 3 channels: Mask R-CNN's backbones take RGB
            return ISBIInstances(root, indices=indices, channels=3, transforms=transforms)
        return ISBI2012(root, indices=indices, transforms=transforms, weight_map=weight_map, w0=data_cfg.w0,
                        sigma=data_cfg.sigma, balance=data_cfg.class_balance)
    if name == "camvid":
        dataset = CamVid(root, split=spec, transforms=transforms)
    elif name == "voc":
        # SBD's extra labels augment training only; a relative sbd_root is under the data root, like data.path.
        sbd_root = getattr(data_cfg, "sbd_root", None) if split == "train" else None
        if sbd_root is not None:
            sbd_root = resolve_root(data_cfg.root) / Path(sbd_root).expanduser()
        dataset = VOCSegmentation(root, split=spec, sbd_root=sbd_root, transforms=transforms)
    else:
        if data_cfg.num_classes is None:
            raise ConfigError("data.dataset='folder' needs data.num_classes (the number of classes in the masks)")
        if len(data_cfg.mean) not in (1, 3):
            raise ConfigError(f"data.mean={data_cfg.mean}: the folder dataset reads 1 or 3 channels; expected 1 or 3 values")
        dataset = FolderDataset(root, split=spec, num_classes=data_cfg.num_classes, ignore_index=data_cfg.ignore_index,
                                in_channels=len(data_cfg.mean), transforms=transforms)
    dataset.label_map = data_cfg.label_map
    if weight_map:
        if dataset.num_classes != 2:
            raise ConfigError(f"data.weight_map=true needs a two-class (background / object) dataset; {name!r} has "
                              f"{dataset.num_classes} classes")
        dataset.weight_map = (data_cfg.w0, data_cfg.sigma, data_cfg.class_balance)
    return dataset
