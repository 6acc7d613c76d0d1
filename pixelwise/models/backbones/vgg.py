"""VGG16 convolutionalised (Long, Shelhamer, Darrell 2015, section 3.1).

`features` is built exactly like torchvision's `vgg16` / `vgg16_bn` (same module indices, so their
state dict keys load unchanged); fc6 and fc7 become a 7x7 and a 1x1 convolution whose weights are
the classifier's Linear weights reshaped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pixelwise.ops.shift_and_stitch import rarefy
from pixelwise.ops.upsample import Placement
from pixelwise.errors import ConfigError, WeightsError

__all__ = ["VGG16", "convert_torchvision_vgg16"]

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """images (B, C, H, W) -> {"pool3", "pool4", "fc7"} feature maps, each with its `placements` entry.

    pad100=True is the paper's network: conv1_1 pads by 100 so that every input size >= 1 gives a
    non-empty fc6 output (the reference Caffe model); the final crop removes the margin.
    pad100=False ("same") pads fc6 by 3 instead, for less computation on large inputs.
    Pools use ceil_mode as in Caffe. `width` scales every channel count (1.0 = VGG16).
    output_stride 16 or 8 rarefies the layers after pool4 or pool3 (FCN section 3.2): their strides
    become 1 and later filters are dilated, so fc7 is 2x or 4x denser, as shift-and-stitch would give.
    """

    def __init__(self, *, in_channels: int = 3, pad100: bool = True, batch_norm: bool = False,
                 width: float = 1.0, fc_channels: int = 4096, dropout: float = 0.5, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"VGG16: output_stride={output_stride!r}, expected 32, 16 or 8")
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                continue
            out = max(1, round(v * width))
            pad = 100 if not layers and pad100 else 1  # FCN section 4: the reference net pads conv1_1 by 100
            layers.append(nn.Conv2d(channels, out, 3, padding=pad))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        self._pool3_index, self._pool4_index = pools[2], pools[3]
        self.features = nn.Sequential(*layers)
        fc6_pad = 0 if pad100 else 3
        self.fc6 = nn.Conv2d(channels, fc_channels, 7, padding=fc6_pad)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        if output_stride < 32:
            self._rarefy_tail(pools[-(32 // output_stride).bit_length() + 1])
        self.placements, self.channels = self._trace()
        self.channels["fc7"] = fc_channels

    def _rarefy_tail(self, first_pool: int) -> None:
        """Filter rarefaction (FCN section 3.2) from `first_pool` on: strides 1, later filters dilated,
        so fc7 has a smaller output stride and a denser output (= shift-and-stitch of the same layers)."""
        n = len(self.features)
        tail = nn.Sequential(*list(self.features)[first_pool:], self.fc6, self.fc7)
        dense = list(rarefy(tail))
        for i, m in enumerate(dense):
            if isinstance(m, nn.MaxPool2d):
                # ceil_mode's extra window at the bottom/right edge: pad by one (dilated) pixel. Zeros
                # act as -inf here because pools follow ReLUs.
                d = m.dilation if isinstance(m.dilation, int) else m.dilation[0]
                dense[i] = nn.Sequential(nn.ZeroPad2d((0, d, 0, d)), m)
        self.features = nn.Sequential(*list(self.features)[:first_pool], *dense[: n - first_pool])
        self.fc6, self.fc7 = dense[-2], dense[-1]

    def _trace(self) -> tuple[dict[str, Placement], dict[str, int]]:
        placements, channels, placement, width = {}, {}, Placement(), 0
        for i, m in enumerate([*self.features, self.fc6]):
            if isinstance(m, nn.Sequential):  # a rarefied pool with its edge padding (at the end: no shift)
                m = m[-1]
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                k, s, p, d = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding, m.dilation))
                placement = placement.conv(k, s, p, d)
            if isinstance(m, nn.Conv2d):
                width = m.out_channels
            for name, index in (("pool3", self._pool3_index), ("pool4", self._pool4_index)):
                if i == index:
                    placements[name], channels[name] = placement, width
        placements["fc7"] = placement
        return placements, channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._pool3_index:
                out["pool3"] = x
            elif i == self._pool4_index:
                out["pool4"] = x
        x = self.drop6(self.relu(self.fc6(x)))
        out["fc7"] = self.drop7(self.relu(self.fc7(x)))
        return out


def convert_torchvision_vgg16(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """torchvision vgg16 / vgg16_bn state dict -> (our VGG16 state dict, fc8 as a 1x1 conv's weight and bias).

    FCN section 3.1: a fully connected layer on a 7x7x512 input is a 7x7 convolution; torchvision
    flattens (512, 7, 7) in C, H, W order, so a reshape is the whole conversion.
    """
    if "classifier.0.weight" not in state:
        raise WeightsError("not a torchvision VGG state dict: no 'classifier.0.weight' key")
    out = {k: v for k, v in state.items() if k.startswith("features.")}
    for ours, theirs, shape in (("fc6", "classifier.0", (-1, 512, 7, 7)), ("fc7", "classifier.3", None),
                                ("fc8", "classifier.6", None)):
        w = state[f"{theirs}.weight"]
        out[f"{ours}.weight"] = w.reshape(shape) if shape else w[:, :, None, None]
        out[f"{ours}.bias"] = state[f"{theirs}.bias"]
    fc8 = {"weight": out.pop("fc8.weight"), "bias": out.pop("fc8.bias")}
    return out, fc8
