"""FCN heads: the skip architecture of FCN-32s/16s/8s (section 4.2) and the modern ResNet head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.ops.upsample import Placement, align_to, bilinear_kernel, crop_to_image
from pixelwise.errors import ConfigError

__all__ = ["SkipHead", "ConvHead", "bilinear_upsampling_"]

# Skip layers by net, coarsest first: FCN-32s has none, FCN-16s adds pool4, FCN-8s pool4 and pool3.
SKIPS = {32: (), 16: ("pool4",), 8: ("pool4", "pool3")}


def bilinear_upsampling_(layer: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Initialise a (K -> K) transposed convolution to per-channel bilinear interpolation (section 3.3)."""
    k, s = layer.kernel_size[0], layer.stride[0]
    if layer.in_channels != layer.out_channels or k != 2 * s:
        raise ConfigError(f"bilinear_upsampling_: expected K->K channels and kernel 2*stride, got {layer}")
    with torch.no_grad():
        layer.weight.zero_()
        kernel = bilinear_kernel(s, dtype=layer.weight.dtype)
        for c in range(layer.in_channels):
            layer.weight[c, c] = kernel
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


class _FixedBilinear(nn.Module):
    """Per-channel bilinear upsampling by `factor`, not learned (the final FCN upsampling, section 4.2)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", bilinear_kernel(factor)[None, None], persistent=False)

    def forward(self, x: torch.Tensor, placement: Placement) -> tuple[torch.Tensor, Placement]:
        k = self.kernel.to(x.dtype).expand(x.shape[1], 1, -1, -1)
        return F.conv_transpose2d(x, k, stride=self.factor, groups=x.shape[1]), placement.transposed(2 * self.factor, self.factor)


class SkipHead(nn.Module):
    """Scores fc7, then fuses 2x-upsampled scores with scores of pool4 (16s) and pool3 (8s), then
    upsamples to the input and crops (FCN section 4.2, Fig. 3).

    features: {"fc7", "pool4", "pool3"} (B, C, h, w) maps placed as `placements` says
    -> logits (B, num_classes, H, W) for an input of size (H, W).

    upsampling="cascade" (default) ends every net with FCN-8s's upsampling chain: 2x, 2x, then a
    fixed 8x. FCN-32s has fixed bilinear 2x stages where FCN-16s/8s have learnable ones initialised
    to bilinear, and bilinear 2x-then-2x-then-8x is one fixed filter, so a coarser net's output is
    reproduced EXACTLY by the next net at initialisation ("the net starts with unmodified
    predictions", section 4.2). upsampling="direct" is the reference Caffe nets' single fixed
    32x (FCN-32s) or 16x (FCN-16s) deconvolution, which reproduces it only approximately.
    """

    def __init__(self, num_classes: int, channels: dict[str, int], placements: dict[str, Placement], *,
                 net: int = 8, upsampling: str = "cascade", learn_upsampling: bool = True) -> None:
        super().__init__()
        if net not in SKIPS:
            raise ConfigError(f"SkipHead: net={net!r}, expected 32, 16 or 8 (FCN-32s, -16s, -8s)")
        if upsampling not in ("cascade", "direct"):
            raise ConfigError(f"SkipHead: upsampling={upsampling!r}, expected 'cascade' or 'direct'")
        self.skips = SKIPS[net]
        stride = int(placements["fc7"].stride)  # 32, or 16 / 8 for a rarefied backbone
        if self.skips and stride != 32:
            raise ConfigError(f"SkipHead: skip layers need fc7 at stride 32, got {stride}")
        self.placements = dict(placements)
        self.score_fr = nn.Conv2d(channels["fc7"], num_classes, 1)
        # Section 4.2: skip scores "zero-initialized, so that the net starts with unmodified predictions",
        # and section 4.3 zero-initialises the class scoring layer as well.
        self.score_pool4 = nn.Conv2d(channels["pool4"], num_classes, 1) if "pool4" in self.skips else None
        self.score_pool3 = nn.Conv2d(channels["pool3"], num_classes, 1) if "pool3" in self.skips else None
        for layer in (self.score_fr, self.score_pool4, self.score_pool3):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # 2x upsamplings: learnable for each skip, initialised to bilinear (section 4.2).
        learn = [nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False) for _ in self.skips]
        for layer in learn:
            bilinear_upsampling_(layer).weight.requires_grad_(learn_upsampling)
        self.upscore2 = learn[0] if len(learn) > 0 else None
        self.upscore_pool4 = learn[1] if len(learn) > 1 else None
        if upsampling == "cascade":
            doublings = (stride // 8).bit_length() - 1  # 2x stages from fc7's stride down to 8
            self.fixed = nn.ModuleList([_FixedBilinear(2) for _ in range(doublings - len(self.skips))] + [_FixedBilinear(8)])
        else:
            self.fixed = nn.ModuleList([_FixedBilinear(stride >> len(self.skips))])

    def forward(self, features: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x, placement = self.score_fr(features["fc7"]), self.placements["fc7"]
        for up, name, score in ((self.upscore2, "pool4", self.score_pool4), (self.upscore_pool4, "pool3", self.score_pool3)):
            if up is None:
                break
            x, placement = up(x), placement.transposed(4, 2)
            # Caffe crops the skip scores to the upsampled map (its crop layer); a "same"-padded net
            # may also need zeros where the skip map ends first.
            x = x + align_to(score(features[name]), self.placements[name], x.shape[-2:], placement)
        for up in self.fixed:
            x, placement = up(x, placement)
        # A rarefied backbone's scores spread less far than a 32x upsampling: on inputs of a few
        # pixels they may not reach the top-left corner, which then gets zero logits.
        return crop_to_image(x, placement, size, pad=self.placements["fc7"].stride != 32)


class ConvHead(nn.Sequential):
    """3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 conv to classes: torchvision's FCNHead layout
    (same module indices, so its `classifier.*` / `aux_classifier.*` weights load unchanged)."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.1) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )
