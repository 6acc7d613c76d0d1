"""One exported graph behind an nn.Module: `RuntimeModule`, called like the PyTorch module it was exported from.

Float32 tensors in, tensors out, in the same structure, so the Predictor's tiling and TTA and Mask
R-CNN's proposal and post-processing code run unchanged around it. What runs the graph is a runtime of
pixelwise.deploy.runtimes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pixelwise.deploy.runtimes import RUNTIMES, check_runtime, flatten
from pixelwise.errors import InferenceError


class RuntimeModule(nn.Module):
    """One exported graph, called like the module it came from.

    structure: how the flat list of graph outputs is regrouped ("tensor", "tuple", "list", or
    "lists:N" for N lists of equal length). denormalize: (mean, std) to undo before the graph, for a
    semantic model whose graph normalises its input itself while the Predictor hands normalised windows.
    buckets: the first `buckets` inputs (True: one; Mask R-CNN's RoIs, or their pooled features; two for a part
    that pools in its graph: the RoIs' boxes and batch indices) are padded with zero rows to the next of BUCKETS,
    and the outputs cut back, so the runtime sees a few shapes, each compiled once (OpenVINO compiles a static
    graph per shape), instead of a new one for every number of RoIs. The other inputs (the feature maps of a part
    that pools in its graph) pass as they are.
    """

    def __init__(self, path: str | Path, runtime: str, *, precision: str = "fp32", structure: str = "tensor",
                 denormalize=None, geometry: nn.Module | None = None, threads: int | None = None,
                 buckets: int = 0) -> None:
        super().__init__()
        # The size rule of the exported model (the valid-convolution U-Net's), which the Predictor asks for.
        for fn in ("input_size_for", "output_size"):
            if geometry is not None and hasattr(geometry, fn):
                setattr(self, fn, _size_rule(geometry, fn))
        self.path, self.runtime, self.structure = str(path), runtime, structure
        if denormalize is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in denormalize)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)
        self.denormalize, self.buckets = denormalize is not None, int(buckets)
        check_runtime(path, runtime)
        # not a module: no weights here
        self._runner = RUNTIMES[runtime](path, precision, threads or torch.get_num_threads(), static=bool(buckets))

    def forward(self, *inputs):
        if self.denormalize:
            inputs = (inputs[0].float() * self.std + self.mean, *inputs[1:])
        if self.buckets:
            flat = flatten(inputs)
            n = flat[0].shape[0]
            padded = [torch.cat([t, t.new_zeros((bucket(n) - n, *t.shape[1:]))]) for t in flat[:self.buckets]]
            return _cut(self._forward((*padded, *flat[self.buckets:])), n)
        return self._forward(inputs)

    def _forward(self, inputs):
        feeds = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in flatten(inputs)]
        try:
            raw = self._runner.run(feeds, inputs)
        except Exception as e:  # the runtime's own refusal (an input size its graph cannot take, ...)
            shapes = ", ".join(str(tuple(f.shape)) for f in feeds)
            raise InferenceError(f"{self.runtime} could not run {self.path!r} on inputs of shape {shapes}: "
                                 f"{' '.join(str(e).split())[-300:]}") from e
        outs = [torch.as_tensor(np.asarray(o)) if not isinstance(o, torch.Tensor) else o for o in raw]
        return regroup(outs, self.structure)


# 1, 2, 4, 8, then steps of at most 1.5x: at most a third of a padded batch is padding, and a few dozen shapes at most.
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def bucket(n: int) -> int:
    """The size n RoIs are padded to: the next of BUCKETS, beyond them the next multiple of 512."""
    return next((b for b in BUCKETS if b >= n), -(-n // 512) * 512)


def _cut(x, n: int):
    if isinstance(x, (list, tuple)):
        return type(x)(_cut(v, n) for v in x)
    return x[:n]


def _size_rule(model: nn.Module, fn: str):
    """model.fn as a function that keeps no reference to the model's weights (they are not needed)."""
    import copy

    skeleton = copy.copy(model)  # shallow: the same attributes (depth, padding, ...) without...
    skeleton._parameters, skeleton._buffers, skeleton._modules = {}, {}, {}  # ...the tensors and children
    return getattr(skeleton, fn)


def regroup(outs: list[torch.Tensor], structure: str):
    if structure == "tensor":
        return outs[0]
    if structure == "tuple":
        return tuple(outs)
    if structure == "list":
        return list(outs)
    if structure.startswith("lists:"):
        n = int(structure.split(":")[1])
        size = len(outs) // n
        return tuple(list(outs[i * size:(i + 1) * size]) for i in range(n))
    raise ValueError(f"unknown output structure {structure!r}")


__all__ = ["BUCKETS", "RuntimeModule", "bucket", "regroup"]
