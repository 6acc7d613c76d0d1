"""Dense layers, dense blocks and transitions of FC-DenseNet (Jegou et al., CVPRW 2017, Table 1).

A dense block (section 3.1, Fig. 2) grows a "stack" of feature maps: each layer sees the
concatenation of the block input and every earlier layer's output and adds `growth_rate` maps.
With `memory_efficient=True` each layer's concatenation-BN-ReLU-convolution is recomputed in the
backward pass instead of stored (Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets"), so training memory grows linearly rather than quadratically with the block depth.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["DenseLayer", "DenseBlock", "TransitionDown", "TransitionUp"]


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class DenseLayer(nn.Module):
    """BN, ReLU, 3x3 convolution to `growth_rate` maps, dropout (Table 1, "Layer").

    features: list of (B, C_i, H, W) with sum(C_i) = in_channels -> (B, growth_rate, H, W)
    """

    def __init__(
        self, in_channels: int, growth_rate: int, *, dropout: float = 0.2, memory_efficient: bool = False
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1)
        self.drop = _dropout(dropout)
        self.memory_efficient = memory_efficient

    def _bn_relu_conv(self, *features: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        x = torch.cat(features, 1) if len(features) > 1 else features[0]
        norm = self.norm
        if update_stats or not norm.training or norm.running_mean is None:
            x = norm(x)
        else:
            # The recomputation in the backward pass: the forward pass already updated the running
            # averages, so this one updates throw-away copies (the same op, as checkpoint checks).
            x = F.batch_norm(
                x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias, True, 0.0, norm.eps
            )
        return self.conv(F.relu(x, inplace=True))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            calls = 0

            def run(*inputs: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                calls += 1
                return self._bn_relu_conv(*inputs, update_stats=calls == 1)

            out = checkpoint(run, *features, use_reentrant=False, preserve_rng_state=True)
        else:
            out = self._bn_relu_conv(*features)
        return self.drop(out)


class DenseBlock(nn.Module):
    """`num_layers` dense layers, each fed the block input and all earlier outputs (section 3.1, Fig. 2).

    x: (B, in_channels, H, W) -> (B, out_channels, H, W). With concat_input=True (downsampling path,
    last block of the upsampling path) the output is the concatenation [x, new maps], out_channels =
    in_channels + num_layers * growth_rate; with concat_input=False (bottleneck and the other
    upsampling blocks, section 3.2) it is only the new maps, out_channels = num_layers * growth_rate.
    """

    def __init__(
        self,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        *,
        concat_input: bool = True,
        dropout: float = 0.2,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout=dropout, memory_efficient=memory_efficient)
            for i in range(num_layers)
        )
        self.concat_input = concat_input
        self.in_channels = in_channels
        self.out_channels = num_layers * growth_rate + (in_channels if concat_input else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features if self.concat_input else features[1:], 1)


class TransitionDown(nn.Sequential):
    """BN, ReLU, 1x1 convolution (same channels), dropout, 2x2 max pooling (Table 1, "Transition Down").

    x: (B, channels, H, W) -> (B, channels, H // 2, W // 2)
    """

    def __init__(self, channels: int, *, dropout: float = 0.2) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            _dropout(dropout),
            nn.MaxPool2d(2, stride=2),
        )
        self.channels = channels


class TransitionUp(nn.Module):
    """3x3 transposed convolution with stride 2, then concatenation with the skip (Table 1, Fig. 1).

    x: (B, in_channels, h, w), skip: (B, C_skip, H, W) with H <= 2h + 1, W <= 2w + 1
    -> (B, out_channels + C_skip, H, W): [upsampled x, skip]. As in the authors' code (an unpadded
    transposed convolution, 2h + 1 rows, centre-cropped to the skip) the upsampled map keeps rows
    0 .. H-1 when H = 2h.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.conv(x)
        height, width = skip.shape[-2:]
        top, left = (up.shape[-2] - height) // 2, (up.shape[-1] - width) // 2
        return torch.cat([up[..., top : top + height, left : left + width], skip], 1)
