"""Gatech, the geometric context video data set of Raza, Grundmann and Essa (BMVC 2013), FC-DenseNet's second
data set (Jegou et al. 2017, section 4.2: 63 videos for training and validation, 38 for testing; FC-DenseNet103
reaches 79.4% global accuracy).

Layout under DATA/gatech/ as the FC-DenseNet authors' loader reads it (their dataset_loaders' GATECH folder):
Images/Original/<video>_<frame>.png and Images/Ground_Truth/<same name>.png (the training videos),
Images_test/Original/ and Images_test/Ground_Truth/ (the test videos); ground truth is 8-bit class indices with
0 = void and 1..8 = sky, ground, solid (buildings), porous, cars, humans, vertical mix, main mix. A frame's video
is the part of its name before the first "_". Splits: "train" (the first 75% of the training videos in natural
order, as that loader splits them), "val" (the other 25%) and "test"; targets are the classes minus one, void
ignored (255).
"""
from __future__ import annotations

import re
from pathlib import Path

from pixelwise.data.base import ImageMaskDataset, refuse_weight_map
from pixelwise.data.folder import default_palette
from pixelwise.data.io import DataError
from pixelwise.data.paths import dataset_dir
from pixelwise.data.registry import class_meta, register_dataset

__all__ = ["Gatech"]


def natural_key(text: str) -> list:
    """"v2_10" after "v2_9": numbers compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class Gatech(ImageMaskDataset):
    """Gatech frames as (image, {"mask": 0..7, 255 void})."""

    num_classes = 8
    ignore_index = 255
    class_names = ["sky", "ground", "solid", "porous", "cars", "humans", "vertical mix", "main mix"]
    palette = default_palette(8)
    in_channels = 3
    splits = ("train", "val", "test")
    train_share = 0.75

    def __init__(self, root_dir: str | Path, *, split: str, transforms=None) -> None:
        if split not in self.splits:
            raise DataError(f"Gatech: split={split!r}; expected train, val or test")
        self.root_dir, self.split, self.transforms = Path(root_dir), split, transforms
        base = self.root_dir / ("Images_test" if split == "test" else "Images")
        image_dir, mask_dir = base / "Original", base / "Ground_Truth"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DataError(f"Gatech: {str(folder)!r} is not a folder; expected {base.name}/Original/ and "
                                f"{base.name}/Ground_Truth/ under {str(self.root_dir)!r}")
        frames = sorted((p for p in image_dir.glob("*.png") if "_" in p.stem), key=lambda p: natural_key(p.name))
        if not frames:
            raise DataError(f"Gatech: no <video>_<frame>.png image in {str(image_dir)!r}")
        if split != "test":
            videos = sorted({p.name.split("_", 1)[0] for p in frames}, key=natural_key)
            keep = int(len(videos) * self.train_share)
            chosen = set(videos[:keep] if split == "train" else videos[keep:])
            frames = [p for p in frames if p.name.split("_", 1)[0] in chosen]
        self.image_paths = frames
        self.mask_paths = [mask_dir / p.name for p in frames]
        for image, mask in zip(self.image_paths, self.mask_paths):
            if not mask.is_file():
                raise DataError(f"Gatech: frame {str(image)!r} has no ground truth; expected {str(mask)!r}")
        self.names = [p.stem for p in frames]
        self.label_map = {0: 255, **{k: k - 1 for k in range(1, 9)}}


@register_dataset("gatech", task="semantic", splits=("train", "val"), meta=class_meta(Gatech))
def build_gatech(data_cfg, role: str, spec: str) -> Gatech:
    refuse_weight_map(data_cfg, "has 8 classes")
    return Gatech(dataset_dir(data_cfg), split=spec)
