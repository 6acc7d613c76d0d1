"""COCO-format instance segmentation: any instances JSON plus its image folder (Mask R-CNN's data).

Category ids are remapped to contiguous labels 1..K in sorted category-id order (0 is background);
`category_ids` maps them back for evaluation. Annotations are checked once, when the dataset is made;
masks are decoded per image in `__getitem__` (polygons and RLE, compressed or not, by pycocotools).

Crowd regions (iscrowd=1) stay in the target with iscrowd=1 unless `drop_crowd=True`. Training code
must not use them as positives: Detectron leaves crowd boxes out of the RPN and RoI ground truth and
ignores proposals that lie mostly inside a crowd region (intersection over the proposal's area above
TRAIN.CROWD_FILTER_THRESH = 0.7); detectron2 simply drops them (drop_crowd=True). COCO evaluation
treats detections that match crowd regions as neither true nor false positives.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from pixelwise.data.io import DataError, _open
from pixelwise.data.paths import dataset_dir, sample_dir
from pixelwise.data.registry import register_dataset

__all__ = ["CocoInstances", "instance_fields", "instance_target"]

_MIN_POLYGON_AREA = 1e-6  # square pixels; below this a polygon is taken as collinear points


def instance_fields(sample: tuple[Any, dict]) -> tuple[torch.Tensor, ...]:
    """The per-instance tensors of a target besides boxes and masks, for v2.SanitizeBoundingBoxes.

    `v2.SanitizeBoundingBoxes(labels_getter=instance_fields)` then drops the same rows of labels,
    iscrowd, area and ann_ids as of boxes and masks.
    """
    target = sample[1]
    return tuple(target[k] for k in ("labels", "iscrowd", "area", "ann_ids") if k in target)


def _to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed RLE or compressed RLE) -> compressed RLE, for mask_utils.decode."""
    if isinstance(segmentation, list):  # polygons: one or more parts of one object
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _tight_boxes(masks: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(N, H, W) masks -> (N, 4) xyxy boxes around their pixels; rows of `fallback` for empty masks."""
    cols, rows = masks.any(1), masks.any(2)  # (N, W), (N, H)
    w, h = cols.shape[1], rows.shape[1]
    boxes = np.stack([cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)], 1)
    return np.where(cols.any(1, keepdims=True), boxes, fallback).astype(np.float32)


def instance_target(masks: np.ndarray, labels: Sequence[int], image_id: int, ann_ids: Sequence[int]) -> dict:
    """A target in the CocoInstances format from (N, H, W) {0, 1} masks: boxes tight around each mask (x2, y2
    one past the last pixel), the labels, no crowd, pixel areas, the image and annotation ids."""
    n, h, w = masks.shape
    return {
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(_tight_boxes(masks, np.zeros((n, 4), np.float32))),
                                          format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w)),
        "labels": torch.tensor(list(labels), dtype=torch.int64),
        "masks": tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8))),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "area": torch.from_numpy(masks.reshape(n, -1).sum(1).astype(np.float32)),
        "image_id": image_id,
        "ann_ids": torch.tensor(list(ann_ids), dtype=torch.int64),
    }


def _polygon_area(poly: Sequence[float]) -> float:
    x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why a segmentation cannot be used, or None."""
    if isinstance(segm, list):
        if not segm:
            return "segmentation=[] (no polygon)"
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                return f"polygon with {n} coordinates {poly}; expected an even number >= 6 (at least 3 points)"
            if _polygon_area(poly) < _MIN_POLYGON_AREA:
                return f"polygon {poly} has zero area (its points are collinear or repeated)"
        xs = [v for poly in segm for v in poly[0::2]]
        ys = [v for poly in segm for v in poly[1::2]]
        if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
            return f"its polygons lie outside the {width}x{height} image (the mask would be empty)"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            return f"RLE size {segm['size']}; expected the image's [height, width] = {[height, width]}"
        counts = segm["counts"]
        if isinstance(counts, list) and sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}; expected height * width = {height * width}"
        if not isinstance(counts, (list, str, bytes)):
            return f"RLE counts of type {type(counts).__name__}; expected a list (uncompressed) or a string"
        return None
    return f"segmentation {str(segm)[:80]}; expected a list of polygons or an RLE dict with counts and size"


class CocoInstances(torch.utils.data.Dataset):
    """Images of a COCO instances JSON as (image, target).

    image: tv_tensors.Image float32 (3, H, W) in [0, 1] (grayscale JPEGs, which COCO has, are repeated to RGB).
    target:
        boxes: tv_tensors.BoundingBoxes XYXY float32 (N, 4): the annotations' bbox clipped to the image
            (what COCO box AP scores against, and what Detectron trains on). A polygon's bbox is the extent
            of its vertices, so slivers thinner than a pixel make it larger than the decoded mask (in
            tiny-coco 10 of 196 polygons, by 1-6 pixels); boxes_from_masks=True gives tight boxes instead.
        labels: int64 (N,), contiguous 1..K
        masks: tv_tensors.Mask uint8 (N, H, W) in {0, 1}
        iscrowd: int64 (N,); area: float32 (N,) (the JSON's area, not updated by transforms)
        image_id: int; ann_ids: int64 (N,) the annotations' ids in the JSON
    Images without annotations are kept: (0, 4) boxes and (0, H, W) masks.

    Args:
        annotation_file: the COCO instances JSON.
        image_dir: folder the images' file_name values are relative to.
        image_ids: keep only these images (in this order); default all, in the JSON's order.
        drop_crowd: leave out iscrowd=1 annotations.
        skip_invalid: drop annotations with a degenerate box or polygon (with one warning that counts
            them) instead of raising DataError.
        boxes_from_masks: boxes tight around the decoded masks (x2, y2 one past the last pixel, as
            pycocotools' toBbox); a mask without pixels keeps its annotation's box.
        data: the instances JSON's content, when it comes from elsewhere (pixelwise.data.annotations converts
            annotation-tool files); annotation_file then only names the source in messages.
    """

    in_channels = 3

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        *,
        image_ids: Sequence[int] | None = None,
        transforms: Callable | None = None,
        drop_crowd: bool = False,
        skip_invalid: bool = False,
        boxes_from_masks: bool = False,
        data: dict | None = None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        if data is None and not self.annotation_file.is_file():
            raise DataError(f"COCO annotation file {str(self.annotation_file)!r} does not exist")
        if not self.image_dir.is_dir():
            raise DataError(f"COCO image folder {str(self.image_dir)!r} does not exist")
        data = self._read_json() if data is None else data
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: dict[int, int] = {k: c["id"] for k, c in enumerate(categories, start=1)}
        self.class_names: list[str] = ["__background__"] + [c["name"] for c in categories]
        self.num_classes = len(categories)  # object classes K, as the model's num_classes (labels are 1..K)
        label_of = {cid: k for k, cid in self.category_ids.items()}

        twice = sorted((i for i, n in Counter(img.get("id") for img in data["images"]).items() if n > 1), key=str)
        if twice:
            raise DataError(f"COCO annotation file {str(self.annotation_file)!r} lists image ids {twice[:10]} more "
                            "than once; expected one entry per image id (annotations refer to images by id)")
        if not data["annotations"]:
            raise DataError(f"COCO annotation file {str(self.annotation_file)!r} has no annotations at all; expected "
                            "at least one object to train on or to score against")
        images = {img["id"]: img for img in data["images"]}
        if image_ids is None:
            image_ids = [img["id"] for img in data["images"]]
        unknown = [i for i in image_ids if i not in images]
        if unknown:
            raise DataError(f"COCO: image ids {unknown[:10]} are not in {str(self.annotation_file)!r}")
        self.image_ids: list[int] = list(image_ids)
        self.image_paths: list[Path] = [self.image_dir / images[i]["file_name"] for i in self.image_ids]
        self.names: list[str] = [Path(images[i]["file_name"]).stem for i in self.image_ids]
        self.sizes: list[tuple[int, int]] = [(int(images[i]["height"]), int(images[i]["width"]))
                                             for i in self.image_ids]
        absent = [str(p) for p in self.image_paths if not p.is_file()]
        if absent:
            raise DataError(
                f"COCO: {len(absent)} image(s) of {str(self.annotation_file)!r} are missing under"
                f" {str(self.image_dir)!r}, for example {absent[0]!r}; is image_dir the folder file_name is"
                " relative to?"
            )

        self._annotations = self._group(data["annotations"], images, label_of, drop_crowd, skip_invalid)
        self.boxes_from_masks = boxes_from_masks
        self.transforms = transforms

    def _read_json(self) -> dict:
        """The annotation file, checked to be an instances JSON."""
        try:
            with open(self.annotation_file) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"COCO annotation file {str(self.annotation_file)!r} is not valid JSON: {e}") from None
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise DataError(
                f"COCO annotation file {str(self.annotation_file)!r} has no {missing} key(s); expected an instances"
                " JSON with images, annotations and categories"
            )
        return data

    def _group(self, annotations: list, images: dict, label_of: dict[int, int], drop_crowd: bool,
               skip_invalid: bool) -> dict[int, list[dict]]:
        """The valid annotations of the wanted images, by image id; invalid ones are refused, or skipped and
        listed in self.skipped."""
        wanted = set(self.image_ids)
        by_image: dict[int, list[dict]] = defaultdict(list)
        self.skipped: list[str] = []  # why each dropped annotation was invalid (skip_invalid=True)
        for ann in annotations:
            image_id = ann.get("image_id")
            if image_id not in images:
                raise DataError(
                    f"COCO: annotation id {ann.get('id')} in {str(self.annotation_file)!r} has image_id={image_id!r},"
                    " which is not among the images"
                )
            if image_id not in wanted or (drop_crowd and ann.get("iscrowd", 0)):
                continue
            if ann.get("category_id") not in label_of:
                raise DataError(
                    f"COCO: annotation id {ann.get('id')} (image {images[image_id]['file_name']!r}) has"
                    f" category_id={ann.get('category_id')!r}, which is not among the categories of"
                    f" {str(self.annotation_file)!r}"
                )
            record, problem = self._record(ann, images[image_id], label_of)
            if problem is not None:
                self._check_size(images[image_id])  # a wrong height / width in the JSON is the real problem
            if problem is None:
                by_image[image_id].append(record)
            elif skip_invalid:
                self.skipped.append(problem)
            else:
                raise DataError(f"{problem}; fix it, or drop such annotations with -o data.skip_invalid=true "
                                "(CocoInstances(skip_invalid=True))")
        if self.skipped:
            warnings.warn(
                f"CocoInstances: skipped {len(self.skipped)} invalid annotation(s) of {str(self.annotation_file)!r};"
                f" first: {self.skipped[0]}",
                stacklevel=3,  # the caller of __init__
            )
        return by_image

    def _record(self, ann: dict, image: dict, label_of: dict[int, int]) -> tuple[dict, str | None]:
        h, w = int(image["height"]), int(image["width"])
        where = f"COCO annotation id {ann.get('id')} (image {image['file_name']!r}, file {str(self.annotation_file)!r})"
        segm = ann.get("segmentation")
        problem = _segmentation_problem(segm, h, w)
        if problem is not None:
            return {}, f"{where}: {problem}"
        bbox = ann.get("bbox")
        if bbox is None:  # results-style files may leave it out
            bbox = mask_utils.toBbox(_to_rle(segm, h, w)).tolist()
        if not (isinstance(bbox, list) and len(bbox) == 4):
            return {}, f"{where}: bbox={bbox!r}; expected [x, y, width, height]"
        x, y, bw, bh = (float(v) for v in bbox)
        x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if x2 <= x1 or y2 <= y1:
            return {}, (
                f"{where}: degenerate box bbox={bbox} -> xyxy [{x1}, {y1}, {x2}, {y2}] inside the {w}x{h} image;"
                " expected positive width and height"
            )
        area = ann.get("area")
        if area is None:
            area = float(mask_utils.area(_to_rle(segm, h, w)))
        record = {
            "id": int(ann["id"]), "box": (x1, y1, x2, y2), "label": label_of[ann["category_id"]],
            "iscrowd": int(ann.get("iscrowd", 0)), "area": float(area), "segmentation": segm,
        }
        return record, None

    def _check_size(self, image: dict) -> None:
        path = self.image_dir / image["file_name"]
        try:
            with Image.open(path) as f:  # reads the header only
                w, h = f.size
        except OSError:
            return  # unreadable files are reported when they are read
        if (h, w) != (int(image["height"]), int(image["width"])):
            raise DataError(
                f"image file {str(path)!r} is {h}x{w} (H x W) but {str(self.annotation_file)!r} says "
                f"{image['height']}x{image['width']} for image id {image['id']}; expected the same size (fix the "
                "JSON's height and width)")

    def __len__(self) -> int:
        return len(self.image_paths)

    def _read_image(self, i: int) -> torch.Tensor:
        path = self.image_paths[i]
        img = _open(path, "image")
        if img.mode != "RGB":
            img = img.convert("RGB")
        h, w = self.sizes[i]
        if (img.height, img.width) != (h, w):
            raise DataError(
                f"image file {str(path)!r} is {img.height}x{img.width} (H x W) but {str(self.annotation_file)!r}"
                f" says {h}x{w}; expected the same size"
            )
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, i: int):
        image = self._read_image(i)
        h, w = self.sizes[i]
        anns = self._annotations.get(self.image_ids[i], [])
        if anns:
            rles = [_to_rle(a["segmentation"], h, w) for a in anns]
            masks = np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
        else:
            masks = np.zeros((0, h, w), dtype=np.uint8)
        boxes = np.array([a["box"] for a in anns], dtype=np.float32).reshape(-1, 4)
        if self.boxes_from_masks:
            boxes = _tight_boxes(masks, boxes)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w)
            ),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "image_id": self.image_ids[i],
            "ann_ids": torch.tensor([a["id"] for a in anns], dtype=torch.int64),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        n = sum(len(v) for v in self._annotations.values())
        return (
            f"CocoInstances(annotation_file={str(self.annotation_file)!r}, images={len(self)}, annotations={n},"
            f" classes={self.num_classes})"
        )


def coco_files(root: Path | None, spec: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of a COCO split: "NAME" is COCO 2017's annotations/instances_NAME.json
    with images in NAME/; "FILE.json:IMAGE_FOLDER" names both (relative to the dataset folder, or absolute)."""
    if ":" in spec:
        ann, images = spec.split(":", 1)
        return tuple(Path(p).expanduser() if root is None or Path(p).expanduser().is_absolute() else root / p
                     for p in (ann, images))
    return root / "annotations" / f"instances_{spec}.json", root / spec


def _absolute(spec: str) -> bool:
    return ":" in spec and all(Path(p).expanduser().is_absolute() for p in spec.split(":", 1))


def coco_meta(data_cfg) -> dict:  # only the JSON knows the classes
    return {"num_classes": None, "class_names": None, "palette": None, "in_channels": 3, "ignore_index": None,
            "label_note": None}


@register_dataset("coco", task="instance", splits=("train2017", "val2017"), meta=coco_meta, reads=("skip_invalid",))
def build_coco(data_cfg, role: str, spec: str) -> CocoInstances:
    root = None if _absolute(spec) else dataset_dir(data_cfg)
    return CocoInstances(*coco_files(root, spec), skip_invalid=data_cfg.skip_invalid)


_SAMPLE_SPLIT = "annotations_instances.json:images"


@register_dataset("coco-sample", task="instance", splits=(_SAMPLE_SPLIT, _SAMPLE_SPLIT), meta=coco_meta,
                  reads=("skip_invalid",))
def build_coco_sample(data_cfg, role: str, spec: str) -> CocoInstances:
    """3 real COCO train2017 images with their 29 annotated objects, bundled in the package (Creative Commons
    licences in its README.txt and JSON): Mask R-CNN's data path where COCO is absent. data.root is not read."""
    return CocoInstances(*coco_files(sample_dir("coco-sample"), spec), skip_invalid=data_cfg.skip_invalid)
