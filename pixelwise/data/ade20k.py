"""ADE20K SceneParsing (Zhou et al., CVPR 2017; the MIT Scene Parsing benchmark's 150 classes) as distributed.

Layout under DATA/ade20k/ (ADEChallengeData2016.zip unpacked; its ADEChallengeData2016/ folder is found as it
comes): images/{training,validation}/ADE_*.jpg and annotations/{training,validation}/ADE_*.png, 8-bit class
indices 0..150 where 0 is "other" (no class of the 150). As the benchmark scores it, "other" is ignored and
the classes are 0..149 (value - 1): data.dataset=ade20k trains and evaluates on the 150 classes.
Splits: training (20,210 images) and validation (2,000).
"""
from __future__ import annotations

from pathlib import Path

from pixelwise.data.base import ImageMaskDataset, refuse_weight_map
from pixelwise.data.io import DataError
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset

__all__ = ["ADE20K"]

# objectInfo150's names (the first of each synonym list), in class order 1..150
NAMES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]


class ADE20K(ImageMaskDataset):
    """ADE20K as (image, {"mask": classes 0..149, 255 = "other", ignored})."""

    num_classes = 150
    ignore_index = 255
    class_names = NAMES
    palette = None
    in_channels = 3
    grey_to_rgb = True  # ADE20K has some grey JPEGs
    label_note = "pixel values are ADE20K's classes minus one (0 = wall ... 149 = flag); the files' 0 (other) is 255"
    splits = ("training", "validation")

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        if split not in self.splits:
            raise DataError(f"ADE20K: split={split!r}; expected training or validation (the folders of images/ "
                            "and annotations/)")
        root = Path(root_dir)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
            root = root / "ADEChallengeData2016"  # the zip's own top folder
        image_dir, annot_dir = root / "images" / split, root / "annotations" / split
        for folder in (image_dir, annot_dir):
            if not folder.is_dir():
                raise DataError(f"ADE20K: {str(folder)!r} is not a folder; expected images/{split}/ and "
                                f"annotations/{split}/ under {str(root)!r}")
        self.image_paths = sorted(image_dir.glob("*.jpg"))
        if not self.image_paths:
            raise DataError(f"ADE20K: no .jpg image in {str(image_dir)!r}")
        self.mask_paths = [annot_dir / f"{p.stem}.png" for p in self.image_paths]
        for image, mask in zip(self.image_paths, self.mask_paths):
            if not mask.is_file():
                raise DataError(f"ADE20K: image {str(image)!r} has no annotation; expected {str(mask)!r}")
        self.root_dir, self.split, self.transforms = root, split, transforms
        self.names = [p.stem for p in self.image_paths]
        self.label_map = {0: 255, **{k: k - 1 for k in range(1, 151)}}  # "reduce zero label"


@register_dataset("ade20k", task="semantic", splits=("training", "validation"), meta=class_meta(ADE20K))
def build_ade20k(data_cfg, role: str, spec: str) -> ADE20K:
    refuse_weight_map(data_cfg, "has 150 classes")
    return ADE20K(dataset_dir(data_cfg), split=spec)
