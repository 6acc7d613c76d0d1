"""Small in-memory datasets for engine tests: no files, deterministic, quick to learn."""
from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from pixelwise.config import Config, apply_override


class Disks(torch.utils.data.Dataset):
    """(channels, size, size) grey images of bright disks on a dark background; mask 1 inside the disks."""

    num_classes, ignore_index = 2, 255
    class_names = ["background", "disk"]

    def __init__(self, n: int = 6, size: int = 32, seed: int = 0, channels: int = 1) -> None:
        self.in_channels = channels
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.images, self.masks = [], []
        for _ in range(n):
            mask = torch.zeros(size, size, dtype=torch.int64)
            for _ in range(2):
                cy, cx = torch.randint(6, size - 6, (2,), generator=g).tolist()
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 1
            image = 0.2 + 0.6 * mask.float() + 0.05 * torch.randn(size, size, generator=g)
            self.images.append(image[None].repeat(channels, 1, 1))
            self.masks.append(mask)
        self.transforms = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, target = tv_tensors.Image(self.images[i].clone()), {"mask": tv_tensors.Mask(self.masks[i].clone())}
        return (self.transforms(image, target) if self.transforms else (image, target))


class Boxes(torch.utils.data.Dataset):
    """RGB (3, size, size) images with 1-2 bright rectangles, each one instance of class 1 ("box")."""

    num_classes = 1
    class_names = ["__background__", "box"]
    category_ids = {1: 1}

    def __init__(self, n: int = 4, size: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            image = np.full((3, size, size), 0.1, dtype=np.float32)
            boxes, masks = [], []
            for _ in range(1 + i % 2):
                x1, y1 = rng.integers(2, size // 2, 2)
                w, h = rng.integers(12, size // 2 - 2, 2)
                mask = np.zeros((size, size), dtype=np.uint8)
                mask[y1:y1 + h, x1:x1 + w] = 1
                image[:, mask.astype(bool)] = 0.9
                boxes.append((x1, y1, x1 + w, y1 + h))
                masks.append(mask)
            self.samples.append((image, boxes, masks))
        self.transforms = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image, boxes, masks = self.samples[i]
        size = image.shape[-2:]
        n = len(boxes)
        masks_t = torch.from_numpy(np.stack(masks))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=size),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": tv_tensors.Mask(masks_t),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "area": masks_t.flatten(1).sum(1).float(),
            "image_id": i,
            "ann_ids": torch.arange(1, n + 1, dtype=torch.int64) + 100 * i,
        }
        return tv_tensors.Image(torch.from_numpy(image.copy())), target


def semantic_config(out, *overrides: str) -> Config:
    """A tiny padded U-Net on Disks (data.dataset=folder describes its classes and channels)."""
    cfg = Config()
    for o in ("data.dataset=folder", "data.num_classes=2", "data.mean=[0.5]", "data.std=[0.25]",
              "model.name=unet_padded", "model.num_classes=2", "model.args={base_width: 4, depth: 2}",
              "train.batch_size=2", "train.max_steps=4", "train.val_every=2", "train.log_every=1", "train.lr=0.01",
              "train.optimizer=adam", "train.threads=2", f"output_dir={out}", *overrides):
        apply_override(cfg, o)
    return cfg


def instance_config(out, *overrides: str) -> Config:
    """A small Mask R-CNN (ResNet-18-FPN, group norm, 64-pixel inputs) on Boxes."""
    cfg = Config()
    for o in ("data.dataset=isbi_instances", "model.name=mask_rcnn_r18_fpn", "model.num_classes=1",
              "model.args={norm: gn, frozen_bn: false, min_size: 64, max_size: 64, rpn_pre_nms_top_n: [200, 100], "
              "rpn_post_nms_top_n: [100, 50], box_batch_size_per_image: 64, detections_per_img: 20}",
              "train.batch_size=2", "train.max_steps=2", "train.val_every=100", "train.log_every=1", "train.lr=1e-4",
              "train.optimizer=adam", "train.best_metric=segm_AP", "train.threads=2", f"output_dir={out}", *overrides):
        apply_override(cfg, o)
    return cfg


def semantic_data():
    return {"train": Disks(6, seed=0), "val": Disks(2, seed=1)}


def instance_data():
    return {"train": Boxes(4, seed=0), "val": Boxes(2, seed=1)}


def write_split(folder, dataset: "Disks") -> None:
    """A folder dataset's split on disk: images/NN.png (8-bit grey) and masks/NN.png (class indices)."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(len(dataset)):
        image = (dataset.images[i][0].clamp(0, 1) * 255).round().numpy().astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i:02d}.png")
        Image.fromarray(dataset.masks[i].numpy().astype(np.uint8)).save(folder / "masks" / f"{i:02d}.png")
