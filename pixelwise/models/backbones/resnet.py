"""ResNet trunks (torchvision's ResNet without avgpool/fc), with optional dilation instead of stride.

Module names equal torchvision's (conv1, bn1, layer1..layer4), so its state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from pixelwise.errors import ConfigError

__all__ = ["ResNetTrunk"]

_DEPTHS = (18, 34, 50, 101, 152)


class ResNetTrunk(nn.Module):
    """images (B, 3, H, W) -> {"c2", "c3", "c4", "c5"}: layer1..layer4 outputs (strides 4, 8, 16, 32,
    or 8 for dilated stages). `channels[name]` gives each output's width."""

    def __init__(self, depth: int = 50, *, dilation: tuple[bool, bool, bool] = (False, False, False)) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ConfigError(f"ResNetTrunk: depth={depth!r}, expected one of {', '.join(map(str, _DEPTHS))}")
        if any(dilation) and depth < 50:
            raise ConfigError(f"ResNetTrunk: dilation needs a bottleneck ResNet (50, 101, 152), got depth={depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=list(dilation))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.channels = {f"c{i + 2}": w * expansion for i, w in enumerate((64, 128, 256, 512))}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        out = {}
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            out[f"c{i + 2}"] = x
        return out
