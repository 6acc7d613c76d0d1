"""What the semantic datasets share: an image path and a class-index mask path per sample."""
from __future__ import annotations

import torch
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data.io import read_image, read_mask
from pixelwise.errors import ConfigError
from pixelwise.ops.weight_map import unet_weight_map

__all__ = ["ImageMaskDataset", "configure", "refuse_weight_map"]


class ImageMaskDataset(torch.utils.data.Dataset):
    """Samples (image_paths[i], mask_paths[i]) read and checked against each other, then passed through
    `transforms`.

    Subclasses set image_paths, mask_paths, in_channels, num_classes, ignore_index, palette and
    transforms. Palette masks are read by their colours (see `read_mask`); `label_map` maps stored
    mask values to classes before they are checked. With `weight_map` set to (w0, sigma, balance), a
    two-class dataset's targets also carry the U-Net weight map (section 3, eq. 2), whose objects are
    the connected regions of class 1.
    """

    palette = None
    grey_to_rgb = False  # a dataset with a few grey images among colour ones (ADE20K) repeats them to RGB
    label_map: dict | None = None
    weight_map: tuple[float, float, bool] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_mask(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Sample i's mask (H, W) int64, checked; `size` (the image's) also checks its size."""
        return read_mask(self.mask_paths[i], num_classes=self.num_classes, ignore_index=self.ignore_index,
                         size=size, image_path=self.image_paths[i] if size else None, palette=self.palette,
                         label_map=self.label_map)

    def _weight(self, i: int, mask: torch.Tensor) -> torch.Tensor:
        cache = self.__dict__.setdefault("_weights", {})
        if i not in cache:
            w0, sigma, balance = self.weight_map
            m = mask.numpy()
            objects, _ = ndimage.label(m == 1)  # 4-connected regions of the foreground class
            cache[i] = torch.from_numpy(unet_weight_map(objects, m, num_classes=2, w0=w0, sigma=sigma, balance=balance,
                                                        ignore_index=self.ignore_index))
        return cache[i].clone()

    def __getitem__(self, i: int):
        image = read_image(self.image_paths[i], channels=self.in_channels, grey_to_rgb=self.grey_to_rgb)
        mask = self.read_mask(i, size=tuple(image.shape[-2:]))
        target = {"mask": tv_tensors.Mask(mask)}
        if self.weight_map is not None:
            target["weight"] = tv_tensors.Mask(self._weight(i, mask))
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def refuse_weight_map(data_cfg, why: str) -> None:
    """data.weight_map on a dataset that cannot make one: refused, not silently left out."""
    if data_cfg.weight_map:
        raise ConfigError(f"data.weight_map=true: {data_cfg.dataset!r} {why}; the weight map (U-Net section 3) needs "
                          "a two-class dataset with separable objects (isbi2012, folder, phc-c2dh-u373, dic-c2dh-hela)")


def configure(dataset: ImageMaskDataset, data_cfg, role: str) -> ImageMaskDataset:
    """Apply data.label_map, and data.weight_map to the train split of a two-class dataset."""
    dataset.label_map = data_cfg.label_map
    if data_cfg.weight_map and role == "train":
        if dataset.num_classes != 2:
            raise ConfigError(f"data.weight_map=true needs a two-class (background / object) dataset; "
                              f"{data_cfg.dataset!r} has {dataset.num_classes} classes")
        dataset.weight_map = (data_cfg.w0, data_cfg.sigma, data_cfg.class_balance)
    return dataset
