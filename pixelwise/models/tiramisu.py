"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jegou, Drozdzal, Vazquez, Romero, Bengio, CVPRW 2017).

A first 3x3 convolution, a downsampling path of dense blocks and transitions down, a bottleneck
dense block and an upsampling path of transitions up and dense blocks (section 3.2, Fig. 1,
Tables 1 and 2). Only the new feature maps of a dense block are upsampled, which keeps the
upsampling path from exploding in width; the skip from each downsampling block is its full stack.
The last dense block's full stack feeds a 1x1 classifier. The network keeps the input size; each
side must be a multiple of 2**(number of transitions down), 32 for the paper's five.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from pixelwise.layers.dense import DenseBlock, TransitionDown, TransitionUp
from pixelwise.registry import register_model
from pixelwise.errors import ConfigError

__all__ = ["FCDenseNet", "fc_densenet56", "fc_densenet67", "fc_densenet103"]


class FCDenseNet(nn.Module):
    """images: (B, in_channels, H, W) -> logits: (B, num_classes, H, W), H and W multiples of `size_step`.

    layers_per_block: 2 * P + 1 block depths, P = number of transitions down: P downsampling
    blocks, the bottleneck, P upsampling blocks (Table 2 lists them for FC-DenseNet103).
    `stack_channels` is the paper's "m" after the first convolution and after each dense block
    (Table 2, with the bottleneck values corrected by +16 as in the authors' README).
    """

    def __init__(
        self,
        *,
        num_classes: int = 11,
        in_channels: int = 3,
        growth_rate: int = 16,
        layers_per_block: Sequence[int] = (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4),
        dropout: float = 0.2,
        first_channels: int = 48,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("in_channels", in_channels, 1),
            ("growth_rate", growth_rate, 1),
            ("first_channels", first_channels, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"FCDenseNet: {name}={value!r}, expected an integer >= {low}")
        blocks = tuple(layers_per_block) if isinstance(layers_per_block, (list, tuple)) else None
        if (
            not blocks
            or len(blocks) < 3
            or len(blocks) % 2 == 0
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks)
        ):
            raise ConfigError(
                f"FCDenseNet: layers_per_block={layers_per_block!r}, expected an odd number (>= 3) of "
                "integers >= 1: the downsampling blocks, the bottleneck, the upsampling blocks"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"FCDenseNet: dropout={dropout!r}, expected a probability in [0, 1)")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.layers_per_block = blocks
        self.num_pools = num_pools = len(blocks) // 2
        self.size_step = self.min_input_size = 2**num_pools
        dense = dict(dropout=dropout, memory_efficient=memory_efficient)

        self.first = nn.Conv2d(in_channels, first_channels, 3, padding=1)
        channels = first_channels
        self.stack_channels = [channels]
        skip_channels = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for n in blocks[:num_pools]:
            self.down_blocks.append(DenseBlock(channels, n, growth_rate, concat_input=True, **dense))
            channels += n * growth_rate
            skip_channels.append(channels)
            self.stack_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout=dropout))

        self.bottleneck = DenseBlock(channels, blocks[num_pools], growth_rate, concat_input=False, **dense)
        self.stack_channels.append(channels + self.bottleneck.out_channels)
        new = self.bottleneck.out_channels

        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, n in enumerate(blocks[num_pools + 1 :]):
            # The transposed convolution keeps the channels of the new maps it upsamples.
            self.transitions_up.append(TransitionUp(new, new))
            channels = new + skip_channels.pop()
            last = i == num_pools - 1
            self.up_blocks.append(DenseBlock(channels, n, growth_rate, concat_input=last, **dense))
            new = n * growth_rate
            self.stack_channels.append(channels + new)
        self.head = nn.Conv2d(self.stack_channels[-1], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # Section 4: HeUniform (Lasagne's, as in the authors' code): U(-b, b), b = sqrt(6 / fan_in).
        # PyTorch takes a transposed convolution's fan_in from weight.size(1), its out_channels,
        # as Lasagne does; here in and out channels are equal anyway.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _invalid(self, size: int, what: str) -> ValueError:
        step = self.size_step
        if size < step:
            nearest = f"the smallest valid size is {step}"
        else:
            below = size // step * step
            nearest = f"nearest valid sizes are {below} and {below + step}"
        return ValueError(
            f"{what} {size} is not a valid input size for this FC-DenseNet ({self.num_pools} transitions down): "
            f"{nearest} (valid sizes are multiples of {step})"
        )

    def output_size(self, input_size: int) -> int:
        """The input side itself; ValueError, naming the nearest valid sides, unless a multiple of size_step."""
        size = int(input_size)
        if size < self.size_step or size % self.size_step:
            raise self._invalid(size, "input side")
        return size

    def input_size_for(self, output_size: int) -> int:
        """Smallest valid input side >= output_size (360 -> 384 for the paper's networks)."""
        if output_size < 1:
            raise ConfigError(f"output_size={output_size!r}, expected a positive integer")
        return math.ceil(output_size / self.size_step) * self.size_step

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, in_channels, H, W) -> logits: (B, num_classes, H, W)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ConfigError(
                f"FCDenseNet: images of shape {tuple(images.shape)}, expected (B, {self.in_channels}, H, W)"
            )
        for what, size in (("height", images.shape[-2]), ("width", images.shape[-1])):
            if size < self.size_step or size % self.size_step:
                raise self._invalid(int(size), f"image {what}")

        x = self.first(images)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.transitions_up, self.up_blocks):
            x = block(up(x, skips.pop()))
        return self.head(x)


@register_model
def fc_densenet56(
    *,
    num_classes: int = 11,
    in_channels: int = 3,
    growth_rate: int = 12,
    layers_per_block: Sequence[int] = (4,) * 11,
    dropout: float = 0.2,
    first_channels: int = 48,
    memory_efficient: bool = False,
) -> FCDenseNet:
    """FC-DenseNet56: 4 layers per dense block, growth rate 12 (Jegou et al. 2017, section 4.1).

    The paper's Table 3 gives 1.5M parameters, but the architecture it describes (the authors' code
    with n_layers_per_block=4, growth_rate=12) has 1,376,795 for 11 classes, 1,397,963 counting batch
    norm's running statistics as Lasagne does; this builds the described architecture.
    """
    return FCDenseNet(
        num_classes=num_classes, in_channels=in_channels, growth_rate=growth_rate, layers_per_block=layers_per_block,
        dropout=dropout, first_channels=first_channels, memory_efficient=memory_efficient,
    )


@register_model
def fc_densenet67(
    *,
    num_classes: int = 11,
    in_channels: int = 3,
    growth_rate: int = 16,
    layers_per_block: Sequence[int] = (5,) * 11,
    dropout: float = 0.2,
    first_channels: int = 48,
    memory_efficient: bool = False,
) -> FCDenseNet:
    """FC-DenseNet67: 5 layers per dense block, growth rate 16 (Jegou et al. 2017, section 4.1).

    3,463,243 parameters for 11 classes; 3,502,923 (the paper's 3.5M, Table 3) with batch norm's
    running statistics, which Lasagne's count includes.
    """
    return FCDenseNet(
        num_classes=num_classes, in_channels=in_channels, growth_rate=growth_rate, layers_per_block=layers_per_block,
        dropout=dropout, first_channels=first_channels, memory_efficient=memory_efficient,
    )


@register_model
def fc_densenet103(
    *,
    num_classes: int = 11,
    in_channels: int = 3,
    growth_rate: int = 16,
    layers_per_block: Sequence[int] = (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4),
    dropout: float = 0.2,
    first_channels: int = 48,
    memory_efficient: bool = False,
) -> FCDenseNet:
    """FC-DenseNet103: blocks of 4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4 layers, growth rate 16 (Table 2).

    9,322,091 parameters for 11 classes; 9,425,163 (the paper's 9.4M, Table 3) with batch norm's
    running statistics, which Lasagne's count includes.
    """
    return FCDenseNet(
        num_classes=num_classes, in_channels=in_channels, growth_rate=growth_rate, layers_per_block=layers_per_block,
        dropout=dropout, first_channels=first_channels, memory_efficient=memory_efficient,
    )


for _fn in (fc_densenet56, fc_densenet67, fc_densenet103):
    _fn.__doc__ += """
    memory_efficient: recompute each dense layer's concatenation-BN-ReLU-convolution in the backward
    pass instead of storing it (Pleiss et al. 2017); same outputs and gradients, less memory, slower.
    Inputs must have sides that are multiples of 2**(len(layers_per_block) // 2), 32 by default.
"""
