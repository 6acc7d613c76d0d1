"""Resumable, seeded data order shared by one process and by DDP ranks.

Every sample's augmentation is seeded from (seed, epoch, index) and the order of each epoch from
(seed, epoch), so step s sees the same pixels in an unbroken run, a resumed run, and any number of
processes sharing the same global batch.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from pixelwise.errors import ConfigError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


class SeededSamples(Dataset):
    """Wraps a dataset; key `epoch * len + i` gives sample i with augmentation seeded by (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class StepBatchSampler(Sampler[list[int]]):
    """Batches of keys for steps [start_step, total_steps) on one rank.

    The global batch of step s is `world_size * batch_size` samples of epoch s // steps_per_epoch,
    taken in a seeded permutation; rank r gets its contiguous slice of it.
    """

    def __init__(
        self, num_samples: int, *, batch_size: int, seed: int, total_steps: int, start_step: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.total_steps, self.start_step, self.rank, self.world_size = total_steps, start_step, rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = self.steps_per_epoch_for(num_samples, batch_size, world_size)

    @staticmethod
    def steps_per_epoch_for(num_samples: int, batch_size: int, world_size: int = 1) -> int:
        """Global batches in one pass over the data (a partial last batch is left out)."""
        if batch_size * world_size > num_samples:
            raise ConfigError(
                f"the global batch ({batch_size} per process x {world_size} processes) is larger than the "
                f"training set ({num_samples} samples); lower train.batch_size"
            )
        return num_samples // (batch_size * world_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 31 + epoch)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start_step, self.total_steps):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            begin = k * self.global_batch + self.rank * self.batch_size
            yield [e * self.n + int(i) for i in perm[begin : begin + self.batch_size]]


def collate(batch: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[(image (C,H,W), {"mask": (H,W), ...})] -> images (B,C,H,W), {"mask": (B,H,W), ...} as plain tensors."""
    images = torch.stack([b[0].as_subclass(torch.Tensor) for b in batch])
    keys = batch[0][1].keys()
    targets = {k: torch.stack([b[1][k].as_subclass(torch.Tensor) for b in batch]) for k in keys}
    return images, targets
