"""Feature Pyramid Network (Lin et al., CVPR 2017) on a ResNet trunk, and the ResNet-C4 backbone.

`ResNetFPN` keeps torchvision's module names (`body.layerK`, `fpn.inner_blocks.i.0`,
`fpn.layer_blocks.i.0`), so the backbone part of a torchvision `maskrcnn_resnet50_fpn` state dict
loads unchanged. `ResNetC4` is the trunk up to res4 (stride 16); its res5 becomes the RoI head
(Mask R-CNN section 3, Fig. 4 left).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

from pixelwise.models.backbones.resnet import ResNetTrunk
from pixelwise.errors import ConfigError

__all__ = ["FPN", "FrozenBatchNorm2d", "NORMS", "ResNetC4", "ResNetFPN", "c2_xavier_fill", "group_norm", "replace_batchnorm", "resnet_trunk"]

NORMS = ("bn", "gn")
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu & He 2018; detectron2's GN recipes)."""
    if channels % 32:
        raise ConfigError(f"group_norm: {channels} channels, expected a multiple of 32 groups")
    return nn.GroupNorm(32, channels)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill as detectron2 uses it: kaiming_uniform(a=1), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def replace_batchnorm(module: nn.Module, factory) -> nn.Module:
    """Replace every nn.BatchNorm2d inside module (in place) by factory(bn); returns module."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, factory(child))
        else:
            replace_batchnorm(child, factory)
    return module


class FrozenBatchNorm2d(TorchvisionFrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers and state dict) that keeps its input's dtype.

    torchvision's multiplies the input by float32 scale and bias, so under bf16 autocast every frozen BN of
    the trunk returned float32: the next convolution cast it back, and every activation between them was
    written and read at twice the size. That held the R50-FPN backbone to 2.1x its fp32 time in bf16
    against 4.0x with the BNs folded away (BENCHMARKS.md, "Mask R-CNN backbone"). The scale and bias are
    still computed in float32, then rounded to the input's dtype once; in float32 nothing changes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)


def _frozen(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, key).copy_(getattr(bn, key).detach())
    return frozen


def resnet_trunk(depth: int, *, norm: str = "bn", frozen_bn: bool = True, trainable_layers: int = 5) -> ResNetTrunk:
    """ResNetTrunk whose BatchNorms are frozen (frozen_bn, the paper's and torchvision's setting), trainable,
    or replaced by GroupNorm(32) (norm="gn", for training from scratch). The first 5 - trainable_layers stages
    of (layer4, layer3, layer2, layer1, conv1) counted from the top get requires_grad=False, as torchvision's
    `trainable_layers` (3 with pretrained weights: the stem and res2 stay fixed, Detectron's FREEZE_AT=2)."""
    if norm not in NORMS:
        raise ConfigError(f"resnet_trunk: norm={norm!r}, expected one of {NORMS}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"resnet_trunk: trainable_layers={trainable_layers}, expected 0..5")
    trunk = ResNetTrunk(depth)
    if norm == "gn":
        replace_batchnorm(trunk, lambda bn: group_norm(bn.num_features))
    elif frozen_bn:
        replace_batchnorm(trunk, _frozen)
    train = _STAGES[len(_STAGES) - trainable_layers:] + (("bn1",) if trainable_layers == 5 else ())
    for name, p in trunk.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)
    return trunk


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: str | None) -> nn.Sequential:
    """Conv (bias only without norm) [+ GroupNorm], laid out as torchvision's Conv2dNormActivation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
    return nn.Sequential(conv, group_norm(out_channels)) if norm == "gn" else nn.Sequential(conv)


class FPN(nn.Module):
    """[C2..C5] (B, C_i, H / s_i, W / s_i) -> [P2..P6] (B, out_channels, ...), strides 4..64.

    FPN section 3: lateral 1x1 convs (`inner_blocks`), top-down nearest upsampling to the lateral's
    size and addition, 3x3 output convs (`layer_blocks`); P6 = max_pool2d(P5, 1, stride 2), the
    subsampling FPN section 4.1 adds for the RPN's 512 anchors (torchvision's LastLevelMaxPool).
    norm="gn" adds GroupNorm(32) after each conv (detectron2's FPN NORM "GN").
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, *, norm: str | None = None) -> None:
        super().__init__()
        if norm not in (None, "gn"):
            raise ConfigError(f"FPN: norm={norm!r}, expected None or 'gn'")
        self.inner_blocks = nn.ModuleList(_conv_norm(c, out_channels, 1, norm) for c in in_channels)
        self.layer_blocks = nn.ModuleList(_conv_norm(out_channels, out_channels, 3, norm) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                c2_xavier_fill(m)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[idx](last))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results


class ResNetFPN(nn.Module):
    """images (B, 3, H, W), H and W multiples of 32 -> [P2, P3, P4, P5, P6], each (B, out_channels, H / s, W / s)
    with s = `strides`. The RoI heads use P2..P5 (`roi_levels`), the RPN all five."""

    strides = (4, 8, 16, 32, 64)
    roi_levels = 4

    def __init__(self, body: ResNetTrunk, out_channels: int = 256, *, norm: str = "bn") -> None:
        super().__init__()
        self.body = body
        self.fpn = FPN([body.channels[f"c{i}"] for i in range(2, 6)], out_channels, norm="gn" if norm == "gn" else None)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        c = self.body(images)
        return self.fpn([c["c2"], c["c3"], c["c4"], c["c5"]])


class ResNetC4(nn.Module):
    """images (B, 3, H, W) -> [C4] (B, 1024 or 256, H / 16, W / 16): conv1..layer3 of a trunk.

    The trunk's layer4 (res5) is taken out with `pop_res5()` and given to the RoI head (Mask R-CNN
    Fig. 4 left), so the backbone computes only up to res4.
    """

    strides = (16,)
    roi_levels = 1

    def __init__(self, body: ResNetTrunk) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.channels["c4"]

    def pop_res5(self) -> nn.Module:
        """Remove and return the trunk's layer4 (res5)."""
        res5 = self.body.layer4
        del self.body.layer4
        return res5

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        return [b.layer3(b.layer2(b.layer1(x)))]
