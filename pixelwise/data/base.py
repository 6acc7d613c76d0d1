"""What the semantic datasets share: an image path and a class-index mask path per sample."""
from __future__ import annotations

import torch

from pixelwise.data.io import read_sample

__all__ = ["ImageMaskDataset"]


class ImageMaskDataset(torch.utils.data.Dataset):
    """Samples (image_paths[i], mask_paths[i]) read by `read_sample` and passed through `transforms`.

    Subclasses set image_paths, mask_paths, in_channels, num_classes, ignore_index and transforms.
    """

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int):
        image, target = read_sample(self.image_paths[i], self.mask_paths[i], channels=self.in_channels,
                                    num_classes=self.num_classes, ignore_index=self.ignore_index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
