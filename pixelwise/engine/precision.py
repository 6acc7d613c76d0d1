"""The fast path: autocast precision, channels_last memory format and BatchNorm folding.

bf16 autocast runs convolutions and matrix products in bfloat16 (avx512_bf16 / AMX on the CPU,
tensor cores on a GPU) while weights, BatchNorm statistics, losses and metrics stay float32;
fp16 needs a GPU and a GradScaler (the Trainer's). channels_last (NHWC) lets oneDNN and cuDNN
skip layout reorders. Folding an eval-mode BatchNorm into the convolution that feeds it removes a
pass over memory and is exact up to float rounding; `fold_batchnorm` checks that on an example.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from pixelwise.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str, key: str = "train.precision"):
    """The autocast context of a precision ("fp32" (or the old "none"), "bf16", "fp16") on `device`."""
    if precision in ("fp32", "none"):
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ConfigError(f"{key}={precision!r}, expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"{key}=fp16 needs a GPU; on the CPU use {key}=bf16")
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def as_float(x):
    """Floating tensors (also inside dicts, lists and tuples) as float32: what leaves the fast path."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, dict):
        return {k: as_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(as_float(v) for v in x)
    return x


def channels_last(x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """A 4-d tensor in NHWC memory order (same values, same shape); anything else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.dim() == 4 else x


def _bn_pairs(module: nn.Module, example: tuple) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) where, on `example`, the BatchNorm's input is exactly the output of the
    conv (the same tensor object): Conv2d -> BatchNorm2d / FrozenBatchNorm2d, each called once."""
    produced, calls, pairs, handles = {}, {}, [], []
    names = {m: n for n, m in module.named_modules()}

    def conv_hook(m, inputs, output):
        calls[m] = calls.get(m, 0) + 1
        produced[id(output)] = (m, output)  # the output is kept alive so that its id stays unique

    def bn_hook(m, inputs):
        calls[m] = calls.get(m, 0) + 1
        hit = produced.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0]:
            pairs.append((hit[0], m))

    for m in module.modules():
        if type(m) is nn.Conv2d:
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, FrozenBatchNorm2d) or (isinstance(m, nn.BatchNorm2d) and m.track_running_stats):
            handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in handles:
            h.remove()
    return [(names[c], names[b]) for c, b in pairs if calls[c] == 1 and calls[b] == 1]


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def _set(module: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, child)


@torch.no_grad()
def fold_batchnorm(module: nn.Module, example: tuple, *, rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """(a copy of `module` in eval mode with every Conv2d -> BatchNorm pair folded, number folded).

    The pairs are found by running `example`; the folded copy must give the same outputs on it
    (within rtol of the largest output). If it does not, a warning says so and the unfolded module is
    returned: folding is an optimisation, never a change of results.
    """
    module.eval()
    pairs = _bn_pairs(module, example)
    if not pairs:
        return module, 0
    folded = copy.deepcopy(module)
    with torch.no_grad():
        for conv, bn in pairs:
            _fold(folded.get_submodule(conv), folded.get_submodule(bn))
            _set(folded, bn, nn.Identity())
        ref, out = _flat(module(*example)), _flat(folded(*example))
    scale = max((r.abs().max().item() for r in ref), default=0.0)
    worst = max(((r - o).abs().max().item() for r, o in zip(ref, out)), default=0.0)
    if len(ref) != len(out) or worst > rtol * max(scale, 1e-6):
        warnings.warn(f"BatchNorm folding changed the outputs by {worst:.3g} (largest output {scale:.3g}); "
                      "running without folding", RuntimeWarning, stacklevel=2)
        return module, 0
    return folded, len(pairs)


def _flat(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x.float()]
    if isinstance(x, dict):
        x = list(x.values())
    return [t for v in x for t in _flat(v)] if isinstance(x, (list, tuple)) else []


def compile_frozen(module: nn.Module) -> nn.Module:
    """torch.compile for inference with the weights frozen as constants (inductor's freezing: each convolution
    fused with the element-wise operations after it, its weights packed once; used without gradients). The flag
    is inductor's global one, read whenever an input size compiles: passed as a torch.compile option it is not
    applied (measured: the same kernels as eager)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    return torch.compile(module)


__all__ = ["PRECISIONS", "as_float", "autocast", "channels_last", "compile_frozen", "fold_batchnorm"]
