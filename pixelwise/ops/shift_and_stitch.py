"""Dense prediction from a strided net (Long, Shelhamer & Darrell 2015, FCN section 3.2).

A net of total stride f predicts once per f x f block of input pixels. Two ways make it dense:

- `shift_and_stitch` runs the net on f^2 shifted copies of the input and interlaces the outputs;
- `rarefy` sets every stride to 1 and dilates ("rarefies") each later filter by the stride
  accumulated before it, so one pass of the returned net computes the same dense output.

Both place outputs in one pixel frame. Let P be the net's padding counted in input pixels
(sum over layers of padding_l * D_l, where D_l is the product of the strides before layer l) and R
its receptive field. Output pixel (i, j) is the prediction whose receptive field has its top-left
corner at input pixel (i - P, j - P) (so the window's centre is (i - P + (R-1)/2, j - P + (R-1)/2)).
Wherever that window lies inside the image, the two outputs are equal. For a net of unpadded (valid)
layers (P = 0) this is all of the rarefied output: `rarefy(net)(images)` is
`shift_and_stitch(net, images, f)[..., :H - R + 1, :W - R + 1]`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from pixelwise.progress import progress as track

__all__ = ["shift_and_stitch", "rarefy", "rarefy_kernel"]

# Layers that act on each pixel on its own (in eval mode), so they commute with rarefaction.
POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.BatchNorm2d, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity,
)


def shift_and_stitch(
    net: nn.Module,
    images: Tensor,
    factor: int,
    *,
    batch_size: int | None = None,
    pad_mode: str = "constant",
    progress: bool = False,
) -> Tensor:
    """Dense output of a net of total stride `factor` by shift-and-stitch (FCN section 3.2).

    For every shift (x, y), 0 <= x, y < factor, the net sees the input with its first y rows and x
    columns cropped and `pad_mode` padding ("constant" = zeros, or "replicate", "reflect") added at
    the bottom and right, so all factor^2 inputs keep size (H, W); equivalently the net's sampling
    grid moves x pixels right and y pixels down. Coarse output (u, v) of shift (x, y) goes to
    dense pixel (u * factor + y, v * factor + x). Shift (0, 0) is the unchanged input, so
    `out[..., ::factor, ::factor] == net(images)`. Dense pixels whose receptive field reaches past
    the bottom or right edge see the padding. Put BatchNorm and Dropout layers in eval mode, and
    call under `torch.no_grad()` for inference so memory stays bounded by `batch_size`.

    Args:
        net: maps (N, C, H, W) to (N, K, h, w).
        images: (B, C, H, W) with H and W multiples of `factor`.
        factor: the net's total output stride f.
        batch_size: shifted images per forward pass; default B (one shift of the batch per pass).
        pad_mode: `torch.nn.functional.pad` mode for the bottom-right border.
        progress: show progress over the forward passes.

    Returns:
        (B, K, f * h, f * w); (B, K, H, W) for a net whose coarse output is (H / f, W / f).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"shift_and_stitch: factor={factor!r}; expected an integer >= 1")
    if images.dim() != 4:
        raise ValueError(
            f"shift_and_stitch: images of shape {tuple(images.shape)} ({images.dim()}-D); expected (B, C, H, W)"
        )
    b, _, h, w = images.shape
    for side, size in (("height", h), ("width", w)):
        if size % factor:
            lower, upper = size // factor * factor, (size // factor + 1) * factor
            nearest = f"sizes are {lower} and {upper}" if lower else f"size is {upper}"
            raise ValueError(
                f"shift_and_stitch: image {side} {size} is not divisible by factor={factor}; nearest valid {nearest}"
            )
    batch_size = b if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"shift_and_stitch: batch_size={batch_size}; expected >= 1")

    f = factor
    padded = F.pad(images, (0, f - 1, 0, f - 1), mode=pad_mode)
    # FCN section 3.2: one input per shift (x, y), 0 <= x, y < f; every (shift, image) is one job.
    jobs = [(y, x, n) for y in range(f) for x in range(f) for n in range(b)]
    dense = None
    for start in track(range(0, len(jobs), batch_size), desc="shift-and-stitch", enabled=progress, leave=False):
        chunk = jobs[start : start + batch_size]
        logits = net(torch.stack([padded[n, :, y : y + h, x : x + w] for y, x, n in chunk]))
        if logits.dim() != 4:
            raise ValueError(f"shift_and_stitch: net returned shape {tuple(logits.shape)}; expected (N, K, h, w)")
        if dense is None:
            dense = logits.new_empty(b, logits.shape[1], f * logits.shape[2], f * logits.shape[3])
        # FCN section 3.2: interlace, so shift (x, y) fills the pixels at offset (y, x) in each f x f block.
        for (y, x, n), out in zip(chunk, logits):
            dense[n, :, y::f, x::f] = out
    return dense


def rarefy_kernel(weight: Tensor, step: int | tuple[int, int]) -> Tensor:
    """The rarefied filter of FCN section 3.2: f'_ij = f_{i/s, j/s} if s divides i and j, else 0.

    Args:
        weight: (..., kh, kw).
        step: s, or (s_h, s_w) per axis.

    Returns:
        (..., (kh - 1) * s_h + 1, (kw - 1) * s_w + 1); convolving with it equals convolving with
        `weight` at dilation `step`.
    """
    sh, sw = _pair(step)
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros(*weight.shape[:-2], (kh - 1) * sh + 1, (kw - 1) * sw + 1)
    out[..., ::sh, ::sw] = weight
    return out


def rarefy(net: nn.Module, *, materialise: bool = False) -> nn.Module:
    """A copy of `net` that computes its shift-and-stitch output in one dense pass (FCN section 3.2).

    Every strided Conv2d / MaxPool2d gets stride 1, and every layer's dilation and padding are
    multiplied by the product D of the strides of the layers before it: the layer's filter is
    rarefied by D, f'_ij = f_{i/D, j/D} where D divides i and j, else 0. Dilation computes that
    without the zeros; `materialise=True` instead gives each Conv2d the literal zero-interleaved
    kernel (`rarefy_kernel`) at dilation 1 (max pooling always uses dilation: it has no weights).
    The output pixel frame is the one of `shift_and_stitch` (see the module docstring): for images
    whose H and W are multiples of the net's total stride f, `rarefy(net)(images)` equals
    `shift_and_stitch(net, images, f)` wherever the receptive field lies inside the image. Pointwise
    layers must be in eval mode (BatchNorm, Dropout) for the two to agree.

    Args:
        net: an nn.Sequential (possibly nested) of Conv2d, MaxPool2d and pointwise layers
            (`POINTWISE`: activations, BatchNorm2d, LocalResponseNorm, Dropout, Identity).

    Returns:
        A new module, (B, C, H, W) -> (B, K, H + 2P - R + 1, W + 2P - R + 1) for padding P and
        receptive field R in input pixels; `net` is unchanged.
    """
    dense, _ = _rarefy(copy.deepcopy(net), (1, 1), "", materialise)
    return dense


def _rarefy(
    module: nn.Module, step: tuple[int, int], name: str, materialise: bool
) -> tuple[nn.Module, tuple[int, int]]:
    """Rarefy `module` (in place where possible) whose input has stride `step`; return it and its output stride."""
    if type(module) is nn.Sequential:
        for child_name, child in module.named_children():
            new, step = _rarefy(child, step, f"{name}.{child_name}" if name else child_name, materialise)
            setattr(module, child_name, new)
        return module, step
    if isinstance(module, POINTWISE):
        return module, step
    if type(module) not in (nn.Conv2d, nn.MaxPool2d):
        raise ValueError(
            f"rarefy: cannot rarefy layer {name or '<root>'!r} ({module}); expected an nn.Sequential of"
            " Conv2d, MaxPool2d and pointwise layers (activations, BatchNorm2d, Dropout, ...)"
        )

    kernel, stride, dilation = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
    padding = module.padding if isinstance(module.padding, str) else _pair(module.padding)
    dilation = (dilation[0] * step[0], dilation[1] * step[1])
    if isinstance(padding, str):
        # 'same' splits an odd total padding d(k-1) unevenly; scaled by D it would split differently.
        odd = any(d * (k - 1) % 2 for d, k in zip(_pair(module.dilation), kernel))
        if padding == "same" and odd and step != (1, 1):
            raise ValueError(
                f"rarefy: layer {name or '<root>'!r} ({module}) has padding='same' with an even kernel after"
                f" stride {step}; give it numeric padding"
            )
    else:
        padding = (padding[0] * step[0], padding[1] * step[1])
    out_step = (step[0] * stride[0], step[1] * stride[1])

    if type(module) is nn.MaxPool2d:
        pool = nn.MaxPool2d(kernel, 1, padding, dilation, module.return_indices, module.ceil_mode)
        return pool, out_step

    weight = module.weight
    if materialise:
        weight = nn.Parameter(rarefy_kernel(weight.detach(), dilation), requires_grad=weight.requires_grad)
        kernel, dilation = tuple(weight.shape[-2:]), (1, 1)
    conv = nn.utils.skip_init(
        nn.Conv2d, module.in_channels, module.out_channels, kernel, stride=1, padding=padding,
        dilation=dilation, groups=module.groups, bias=module.bias is not None,
        padding_mode=module.padding_mode, device=weight.device, dtype=weight.dtype,
    )
    conv.weight, conv.bias = weight, module.bias
    return conv, out_step
