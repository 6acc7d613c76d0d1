"""Dataset registry: a dict and a decorator, as for models (pixelwise.registry).

Each dataset module registers a builder `(data_cfg, role, spec) -> Dataset` together with what the
rest of pixelwise needs to know before any file is read: its task ("semantic" or "instance"), its
default train / val splits, its classes and channels (`meta`), the metrics its evaluation adds to
the task's own (ISBI 2012's challenge scores), and the dataset-specific data.* keys it reads.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from pixelwise.errors import ConfigError

__all__ = ["DatasetEntry", "register_dataset", "dataset_entry", "list_datasets", "class_meta"]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str  # "semantic" | "instance": the task of the models that train on it
    splits: tuple[str, str]  # default data.train_split, data.val_split
    build: Callable[..., Any]  # (data_cfg, role, spec) -> dataset; role is "train", "val" or a split name
    meta: Callable[[Any], dict]  # data_cfg -> num_classes, class_names, palette, in_channels, ignore_index, label_note
    metrics: tuple[str, ...] = ()  # reported on top of the task's metrics
    reads: tuple[str, ...] = ()  # dataset-specific data.* keys (refused on the other datasets)


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, task: str, splits: tuple[str, str], meta: Callable[[Any], dict],
                     metrics: tuple[str, ...] = (), reads: tuple[str, ...] = ()):
    def register(build):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetEntry(name, task, splits, build, meta, metrics, reads)
        return build
    return register


def list_datasets() -> list[str]:
    return list(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        close = difflib.get_close_matches(str(name), list(_DATASETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"data.dataset={name!r} is unknown; {hint}expected one of {', '.join(_DATASETS)}")
    return _DATASETS[name]


def class_meta(cls, **extra) -> Callable[[Any], dict]:
    """`meta` from a dataset class's attributes (num_classes, class_names, palette, in_channels, ...)."""
    def meta(data_cfg) -> dict:
        return {"num_classes": cls.num_classes, "class_names": list(cls.class_names),
                "palette": None if cls.palette is None else list(cls.palette), "in_channels": getattr(cls, "in_channels", None),
                "ignore_index": getattr(cls, "ignore_index", None), "label_note": getattr(cls, "label_note", None),
                **extra}
    return meta
