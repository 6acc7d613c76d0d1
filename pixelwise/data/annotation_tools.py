"""Annotation-tool exports read where they lie (issue 29): LabelMe JSON, YOLO segmentation text files and CVAT
for images XML, for both tasks.

Each reader turns one split into ImageRecords (an image file, its size, its objects: a class name and a COCO
segmentation, polygons or RLE), checked as COCO files are checked (too few points, zero area, outside the
image, an unknown class), each refusal naming the file and the object; data.skip_invalid drops such objects
with one warning instead. Then:

- semantic datasets (`labelme`, `yolo`, `cvat`): class 0 is the background, the classes 1..K are the class
  list's; objects are painted in the file's order (CVAT: by z_order), so a later one covers an earlier one;
- instance datasets (`labelme_instances`, `yolo_instances`, `cvat_instances`): every object is one instance
  of label 1..K, through CocoInstances (the same masks, boxes and evaluation as COCO files).

The class list is data.classes where given (objects of other classes are refused), else the files': YOLO's
data.yaml `names` or classes.txt, CVAT's <labels>, or for LabelMe the sorted labels of every JSON file in the
dataset folder (all splits, so that every split numbers the classes alike). A LabelMe or CVAT label named
"background" or "_background_" is class 0.

Layouts (under DATA/<data.path, default the dataset's name>/):
    labelme: <split>/*.json, each beside (or naming by imagePath, relative to it) its image
    yolo:    images/<split>/*.{jpg,png,...} and labels/<split>/<same stem>.txt ("class x1 y1 x2 y2 ..." in
             [0, 1], or a box "class xc yc w h"; an image without a label file has no object), data.yaml
             (names) or classes.txt
    cvat:    <split>/annotations.xml and <split>/images/ (or the split "FILE.xml:IMAGE_FOLDER")
"""
from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from pixelwise.data.base import refuse_weight_map
from pixelwise.data.coco import CocoInstances, _segmentation_problem, _to_rle
from pixelwise.data.folder import default_palette
from pixelwise.data.io import DataError, read_image
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import register_dataset

__all__ = ["ImageRecord", "read_labelme", "read_yolo", "read_cvat", "AnnotatedSemantic", "annotated_instances"]

BACKGROUND = ("background", "_background_")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NO_AREA = ("line", "linestrip", "point", "points")  # LabelMe shapes that cover no pixel: not objects


@dataclass
class ImageRecord:
    image: Path
    height: int
    width: int
    objects: list = field(default_factory=list)  # [(class name, COCO segmentation: [polygon, ...] or RLE dict)]


class _Checker:
    """Polygon checks as COCO's, refusing (DataError) or, with skip_invalid, counting what is dropped."""

    def __init__(self, skip_invalid: bool, classes: list[str] | None, source: str) -> None:
        self.skip_invalid, self.classes, self.source, self.skipped = skip_invalid, classes, source, []

    def keep(self, where: str, label: str, polygons: list | None, height: int, width: int) -> bool:
        problem = None
        if self.classes is not None and label not in self.classes and label not in BACKGROUND:
            problem = f"class {label!r} is not among the classes {self.classes} (data.classes or the class file)"
        elif polygons is not None:  # the COCO reader's own checks
            problem = _segmentation_problem(polygons, height, width)
        if problem is None:
            return True
        if not self.skip_invalid:
            raise DataError(f"{where}: {problem}; fix it, or drop such objects with -o data.skip_invalid=true")
        self.skipped.append(f"{where}: {problem}")
        return False

    def warn(self) -> None:
        if self.skipped:
            warnings.warn(f"{self.source}: skipped {len(self.skipped)} invalid object(s); first: {self.skipped[0]}",
                          stacklevel=4)


def _size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:
        raise DataError(f"image file {str(path)!r} cannot be read: {e}") from None


def _labelme_polygon(shape: dict, where: str) -> list[float] | None:
    """A LabelMe shape as one COCO polygon [x1, y1, ...]; None for shapes that have no area (line, point)."""
    points = shape.get("points") or []
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
        raise DataError(f"{where}: points {str(points)[:80]}; expected a list of [x, y]")
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon":
        return [float(v) for p in points for v in p]
    if kind == "rectangle" and len(points) == 2:
        (x1, y1), (x2, y2) = points
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    if kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        return [v for k in range(32) for v in (cx + r * math.cos(2 * math.pi * k / 32),
                                                cy + r * math.sin(2 * math.pi * k / 32))]
    if kind in NO_AREA:
        return None
    raise DataError(f"{where}: shape_type {kind!r} with {len(points)} points; expected polygon, rectangle or circle")


def labelme_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"LabelMe: {str(folder)!r} is not a folder; expected <split>/*.json beside their images")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"LabelMe: no .json file in {str(folder)!r}; expected one LabelMe file per image")
    return files


def _labelme_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"LabelMe file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or not data.get("imagePath"):
        raise DataError(f"LabelMe file {str(path)!r} has no shapes list or imagePath; expected a LabelMe JSON")
    return data


def labelme_classes(root: Path) -> list[str]:
    """The sorted labels of every LabelMe file under root (all splits), background names left out."""
    labels = {str(s.get("label")) for path in sorted(root.rglob("*.json")) for s in _labelme_json(path)["shapes"]
              if s.get("shape_type") not in NO_AREA}
    return sorted(labels - set(BACKGROUND))


def read_labelme(folder: Path, classes: list[str] | None, skip_invalid: bool = False) -> list[ImageRecord]:
    """One ImageRecord per LabelMe file of `folder`; shapes of one label sharing a group_id are one object."""
    check, records = _Checker(skip_invalid, classes, f"LabelMe {str(folder)!r}"), []
    for path in labelme_files(folder):
        data = _labelme_json(path)
        image = (path.parent / data["imagePath"]).resolve() if not Path(data["imagePath"]).is_absolute() \
            else Path(data["imagePath"])
        if not image.is_file():  # LabelMe keeps the path it was given; the image often sits beside the JSON
            image = path.parent / Path(data["imagePath"]).name
        height, width = _size(image)
        declared = (data.get("imageHeight"), data.get("imageWidth"))
        if None not in declared and tuple(declared) != (height, width):
            raise DataError(f"LabelMe file {str(path)!r} says {declared[0]} x {declared[1]} (H x W) but its image "
                            f"{str(image)!r} is {height} x {width}; expected the same size")
        groups: dict = {}
        for k, shape in enumerate(data["shapes"]):
            where, label = f"LabelMe file {str(path)!r}, shape {k}", str(shape.get("label"))
            polygon = _labelme_polygon(shape, where)
            if polygon is None or not check.keep(where, label, [polygon], height, width):
                continue
            key = (label, shape["group_id"]) if shape.get("group_id") is not None else (label, "shape", k)
            groups.setdefault(key, []).append(polygon)
        records.append(ImageRecord(image, height, width, [(key[0], polys) for key, polys in groups.items()]))
    check.warn()
    return records


def yolo_classes(root: Path) -> list[str]:
    """YOLO's class names: data.yaml's `names` (a list, or a mapping id -> name), else classes.txt."""
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            try:
                names = (yaml.safe_load((root / name).read_text()) or {}).get("names")
            except yaml.YAMLError as e:
                raise DataError(f"YOLO: {str(root / name)!r} is not valid YAML: {e}") from None
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names)]
            if isinstance(names, list) and names:
                return [str(n) for n in names]
            raise DataError(f"YOLO: {str(root / name)!r} has no `names` list; expected the class names")
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    raise DataError(f"YOLO: neither data.yaml nor classes.txt in {str(root)!r}; the label files hold class ids "
                    "only, so the class names must come from one of them (or from data.classes)")


def read_yolo(root: Path, split: str, classes: list[str], skip_invalid: bool = False) -> list[ImageRecord]:
    """One ImageRecord per image of images/<split>/, its objects from labels/<split>/<stem>.txt."""
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    if not image_dir.is_dir():
        raise DataError(f"YOLO: {str(image_dir)!r} is not a folder; expected images/<split>/ and labels/<split>/")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"YOLO: no image in {str(image_dir)!r}")
    check, records = _Checker(skip_invalid, None, f"YOLO {str(root)!r}"), []
    for image in images:
        height, width = _size(image)
        record, label_file = ImageRecord(image, height, width), label_dir / f"{image.stem}.txt"
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"YOLO label file {str(label_file)!r}, line {n}"
            try:
                values = [float(v) for v in line.split()]
            except ValueError:
                raise DataError(f"{where}: {line.strip()[:80]!r}; expected a class id and coordinates") from None
            k = values[0]
            if k != int(k) or not 0 <= k < len(classes):
                raise DataError(f"{where}: class id {values[0]:g}; expected an integer in [0, {len(classes)}) "
                                f"(the {len(classes)} classes {classes})")
            coords = values[1:]
            if any(not -0.01 <= v <= 1.01 for v in coords):
                raise DataError(f"{where}: coordinates outside [0, 1]; YOLO stores them normalised by the image size")
            if len(coords) == 4:  # a box: xc yc w h
                xc, yc, w, h = coords
                x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
                coords = [x1, y1, x2, y1, x2, y2, x1, y2]
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            if check.keep(where, classes[int(k)], [polygon], height, width):
                record.objects.append((classes[int(k)], [polygon]))
        records.append(record)
    check.warn()
    return records


def _cvat_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise DataError(f"CVAT annotation file {str(path)!r} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"CVAT annotation file {str(path)!r} is not valid XML: {e}") from None
    if root.tag != "annotations":
        raise DataError(f"CVAT annotation file {str(path)!r} starts with <{root.tag}>; expected <annotations> "
                        "(the 'CVAT for images 1.1' export)")
    return root


def cvat_classes(path: Path) -> list[str]:
    """The <label> names of the XML's <meta> (objects name their label in an attribute, not an element)."""
    names = [e.findtext("name") for e in _cvat_xml(path).iter("label")]
    names = [n for n in names if n and n not in BACKGROUND]
    if not names:
        raise DataError(f"CVAT annotation file {str(path)!r} lists no <label> in its <meta>; give the classes with "
                        "data.classes")
    return names


def _cvat_mask(element: ET.Element, height: int, width: int, where: str) -> dict:
    """A CVAT mask (run lengths over its box, row by row, starting with background) as a COCO RLE."""
    try:
        counts = [int(v) for v in element.get("rle", "").split(",")]
        left, top, w, h = (int(float(element.get(k))) for k in ("left", "top", "width", "height"))
    except (TypeError, ValueError):
        raise DataError(f"{where}: a mask without a readable rle, left, top, width and height") from None
    if sum(counts) != w * h or left < 0 or top < 0 or left + w > width or top + h > height:
        raise DataError(f"{where}: mask runs summing to {sum(counts)} over a {w} x {h} box at ({left}, {top}); "
                        f"expected width x height = {w * h} inside the {width} x {height} image")
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8).reshape(h, w)
    full = np.zeros((height, width), np.uint8)
    full[top:top + h, left:left + w] = values
    return mask_utils.encode(np.asfortranarray(full))


def read_cvat(xml_file: Path, image_dir: Path, classes: list[str], skip_invalid: bool = False) -> list[ImageRecord]:
    """One ImageRecord per <image> of a CVAT for images XML: polygons, boxes and masks, painted by z_order."""
    check, records = _Checker(skip_invalid, classes, f"CVAT {str(xml_file)!r}"), []
    for image in _cvat_xml(xml_file).iter("image"):
        path = image_dir / image.get("name", "")
        height, width = _size(path)
        declared = (int(image.get("height", height)), int(image.get("width", width)))
        if declared != (height, width):
            raise DataError(f"CVAT file {str(xml_file)!r} says {declared[0]} x {declared[1]} for {str(path)!r}, which "
                            f"is {height} x {width}; expected the same size")
        found = []
        for k, element in enumerate(image):
            where, label = f"CVAT file {str(xml_file)!r}, image {image.get('name')!r}, <{element.tag}> {k}", \
                element.get("label", "")
            if element.tag == "polygon":
                try:
                    polygon = [float(v) for pair in element.get("points", "").split(";") for v in pair.split(",")]
                except ValueError:
                    raise DataError(f"{where}: points {element.get('points', '')[:80]!r}; expected 'x,y;x,y;...'") \
                        from None
                if check.keep(where, label, [polygon], height, width):
                    found.append((int(element.get("z_order", 0)), k, label, [polygon]))
            elif element.tag == "box":
                x1, y1, x2, y2 = (float(element.get(a, 0)) for a in ("xtl", "ytl", "xbr", "ybr"))
                polygon = [x1, y1, x2, y1, x2, y2, x1, y2]
                if check.keep(where, label, [polygon], height, width):
                    found.append((int(element.get("z_order", 0)), k, label, [polygon]))
            elif element.tag == "mask":
                if check.keep(where, label, None, height, width):
                    found.append((int(element.get("z_order", 0)), k, label, _cvat_mask(element, height, width, where)))
        records.append(ImageRecord(path, height, width, [(label, segm) for _, _, label, segm in sorted(found)]))
    if not records:
        raise DataError(f"CVAT annotation file {str(xml_file)!r} has no <image>; expected the 'CVAT for images' export")
    check.warn()
    return records


class AnnotatedSemantic(torch.utils.data.Dataset):
    """Semantic samples painted from ImageRecords: class 0 the background, class k the k-th of class_names[1:]."""

    palette = None
    ignore_index = None

    def __init__(self, records: list[ImageRecord], classes: list[str], in_channels: int = 3,
                 transforms: Callable | None = None) -> None:
        self.records, self.transforms, self.in_channels = records, transforms, in_channels
        self.class_names = ["background", *classes]
        self.num_classes, self.palette = len(self.class_names), default_palette(len(self.class_names))
        self.image_paths = [r.image for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def read_mask(self, i: int) -> torch.Tensor:
        r = self.records[i]
        mask = np.zeros((r.height, r.width), np.int64)
        for label, segm in r.objects:
            k = 0 if label in BACKGROUND else self.class_names.index(label)
            mask[mask_utils.decode(_to_rle(segm, r.height, r.width)).astype(bool)] = k
        return torch.from_numpy(mask)

    def __getitem__(self, i: int):
        image = read_image(self.records[i].image, channels=self.in_channels, grey_to_rgb=True)
        target = {"mask": tv_tensors.Mask(self.read_mask(i))}
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def annotated_instances(records: list[ImageRecord], classes: list[str], source: str) -> CocoInstances:
    """The records as COCO instances (one per object, labels 1..K in the class list's order)."""
    images, annotations = [], []
    for i, r in enumerate(records, start=1):
        images.append({"id": i, "file_name": str(r.image), "height": r.height, "width": r.width})
        for label, segm in r.objects:
            if label in BACKGROUND:
                continue
            rle = _to_rle(segm, r.height, r.width)
            if isinstance(rle.get("counts"), bytes):
                rle = dict(rle, counts=rle["counts"].decode())
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": classes.index(label) + 1,
                                "segmentation": segm if isinstance(segm, list) else rle, "iscrowd": 0,
                                "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle))})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": n} for k, n in enumerate(classes, start=1)]}
    return CocoInstances(source, Path("/"), data=data)


# ---- registration: one builder per format, for both tasks ----

def _classes(data_cfg, fmt: str, root: Path, spec: str) -> list[str]:
    if data_cfg.classes:
        return [str(c) for c in data_cfg.classes if str(c) not in BACKGROUND]
    if fmt == "labelme":
        return labelme_classes(root)
    if fmt == "yolo":
        return yolo_classes(root)
    return cvat_classes(_cvat_files(root, spec)[0])


def _cvat_files(root: Path, spec: str) -> tuple[Path, Path]:
    if ":" in spec:
        xml, images = spec.split(":", 1)
        return root / xml, root / images
    return root / spec / "annotations.xml", root / spec / "images"


def _records(data_cfg, fmt: str, spec: str) -> tuple[list[ImageRecord], list[str], Path]:
    root = dataset_dir(data_cfg)
    classes = _classes(data_cfg, fmt, root, spec)
    if fmt == "labelme":
        return read_labelme(root / spec, classes, data_cfg.skip_invalid), classes, root / spec
    if fmt == "yolo":
        return read_yolo(root, spec, classes, data_cfg.skip_invalid), classes, root / "labels" / spec
    xml, images = _cvat_files(root, spec)
    return read_cvat(xml, images, classes, data_cfg.skip_invalid), classes, xml


def _meta(data_cfg) -> dict:
    """The classes when data.classes gives them; otherwise only the files know them (as for COCO)."""
    names = [str(c) for c in data_cfg.classes if str(c) not in BACKGROUND] if data_cfg.classes else None
    k = None if names is None else len(names) + 1
    return {"num_classes": k, "class_names": None if names is None else ["background", *names],
            "palette": None if k is None else default_palette(k), "in_channels": len(data_cfg.mean),
            "ignore_index": None, "label_note": None}


def _instance_meta(data_cfg) -> dict:
    names = [str(c) for c in data_cfg.classes if str(c) not in BACKGROUND] if data_cfg.classes else None
    return {"num_classes": None if names is None else len(names), "class_names": None if names is None else
            ["__background__", *names], "palette": None, "in_channels": 3, "ignore_index": None, "label_note": None}


def _register(fmt: str, splits: tuple[str, str]) -> None:
    @register_dataset(fmt, task="semantic", splits=splits, meta=_meta, reads=("classes", "skip_invalid"))
    def build_semantic(data_cfg, role: str, spec: str) -> AnnotatedSemantic:
        refuse_weight_map(data_cfg, "does not make weight maps yet (its objects overlap, painted in order)")
        records, classes, _ = _records(data_cfg, fmt, spec)
        return AnnotatedSemantic(records, classes, in_channels=len(data_cfg.mean))

    @register_dataset(f"{fmt}_instances", task="instance", splits=splits, meta=_instance_meta,
                      reads=("classes", "skip_invalid"))
    def build_instances(data_cfg, role: str, spec: str) -> CocoInstances:
        records, classes, source = _records(data_cfg, fmt, spec)
        return annotated_instances(records, classes, str(source))


for _fmt in ("labelme", "yolo", "cvat"):
    _register(_fmt, ("train", "val"))
