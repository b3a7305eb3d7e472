"""Data order owned by the trainer: which sample each rank sees at each step is a pure function of
(seed, epoch, rank, world size, position), so a resumed run continues at exactly the same sample.

Each epoch is a seeded permutation of the whole dataset, padded by wrapping around to a multiple of the world
size and dealt out round-robin to the ranks, as `torch.utils.data.DistributedSampler` does. Each rank reads
its share as one endless stream; micro-batch `m` is positions `m*b … m*b+b-1` of that stream, so a batch may
straddle two epochs and no sample is dropped.

With one rank and batch `2b`, the samples of a step are exactly the union of what two ranks with batch `b`
see: the DDP test relies on that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Sampler, default_collate


class MapDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class ShardedOrder:
    """The per-rank endless index stream described in the module docstring."""

    def __init__(self, dataset_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if dataset_size < 1:
            raise ValueError("the training dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = math.ceil(dataset_size / world_size)
        self._epoch = -1
        self._shard: list[int] = []

    def epoch_shard(self, epoch: int) -> list[int]:
        """This rank's indices for one epoch (cached: positions are read in order)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
            padded_size = self.per_rank * self.world_size
            while len(order) < padded_size:
                order += order[: padded_size - len(order)]
            self._shard = order[self.rank:padded_size:self.world_size]
            self._epoch = epoch
        return self._shard

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices at stream positions `start … start+count-1`."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.per_rank)
            out.append(self.epoch_shard(epoch)[offset])
        return out

    def micro_batch(self, micro_index: int, batch_size: int) -> list[int]:
        return self.indices(micro_index * batch_size, batch_size)


class _MicroBatchSampler(Sampler[list[int]]):
    """Endless batch sampler for `DataLoader` (used only when `num_workers > 0`)."""

    def __init__(self, order: ShardedOrder, batch_size: int, first_micro: int) -> None:
        self.order = order
        self.batch_size = batch_size
        self.first_micro = first_micro

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.first_micro
        while True:
            yield self.order.micro_batch(micro, self.batch_size)
            micro += 1


def micro_batches(dataset: MapDataset | Sequence[Any], order: ShardedOrder, *, batch_size: int, first_micro: int,
                  collate_fn: Callable[[list[Any]], Any] | None = None, num_workers: int = 0,
                  pin_memory: bool = False) -> Iterator[Any]:
    """Collated micro-batches from micro-batch number `first_micro` on, forever.

    Datasets should be deterministic per index (seed any augmentation from the index): with worker processes
    the global RNG of the main process is not theirs, and an exact resume needs the same sample each time.
    """
    collate = collate_fn or default_collate
    if num_workers == 0:
        micro = first_micro
        while True:
            yield collate([dataset[i] for i in order.micro_batch(micro, batch_size)])
            micro += 1
    # The loader's own generator keeps worker seeding off the global RNG stream (which dropout uses), and
    # makes worker seeds a function of where the run (re)started.
    generator = torch.Generator().manual_seed(order.seed * 7919 + order.rank * 104_729 + first_micro)
    loader = DataLoader(dataset, batch_sampler=_MicroBatchSampler(order, batch_size, first_micro),
                        collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory, generator=generator)
    yield from loader
