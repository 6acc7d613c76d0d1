"""Distributed data parallel under torchrun: gloo on CPU, NCCL on GPU. Rank 0 alone writes files."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pixelwise.errors import ConfigError, PixelwiseError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; under torchrun each process takes its own GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine; use train.device=auto "
                          "or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device={name!r} but MPS is not available on this machine; use train.device=auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if any rank's flag is set (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar over all ranks (the loss of the global batch, for logging)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / info.world_size


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, info: DistInfo):
    """fn() on rank 0 (None elsewhere), then a barrier; a PixelwiseError it raises is raised on every rank, so
    each stops with the one message instead of waiting for a rank that has left."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except PixelwiseError as e:
            error = e
    error = broadcast_object(error, info)
    if error is not None:
        raise error
    return result
