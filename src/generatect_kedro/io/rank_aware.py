"""Catalog outputs under a launcher (torchrun / deepspeed), where every rank runs the whole `kedro run`.

Kedro saves every node output on every rank. `RankAwareDataset` wraps a catalog entry so that only rank 0
writes it (the other ranks keep the value in memory), or every rank writes its own share followed by a
barrier (e.g. volumes sharded over the ranks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset

LOG = logging.getLogger(__name__)

__all__ = ["RankAwareDataset", "distributed_barrier", "local_rank", "process_rank", "world_size"]


# ---- ranks ---------------------------------------------------------------------------------------------

def process_rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def distributed_barrier() -> None:
    """Wait for every rank (no-op in one process). Starts the default process group when nobody has yet,
    with the backend the trainer would pick (NCCL on GPUs, gloo on CPU); the trainer later reuses it."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[local_rank()])
    else:
        dist.barrier()


_NOTHING = object()


class RankAwareDataset(AbstractDataset):
    """A catalog wrapper for multi-rank runs: rank 0 writes (or every rank its share), the rest stay in memory.

    ``all_ranks_write: false`` (default): only rank 0 saves; other ranks keep what they were given and load
    it back from memory (the wrapped dataset when they saved nothing yet). ``all_ranks_write: true``: every
    rank saves (e.g. its shard of a ``PartitionedDataset`` with ``overwrite: false``). ``barrier: true``: after
    saving, wait for every rank, so a later load on any rank sees what all of them wrote.
    ``artifact_path``: also log the written file to the active MLflow run (rank 0; no-op without a run).
    In one process (no launcher) it is the wrapped dataset.
    """

    def __init__(self, dataset: Mapping[str, Any] | AbstractDataset, all_ranks_write: bool = False,
                 barrier: bool = False, artifact_path: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._dataset = (dataset if isinstance(dataset, AbstractDataset)
                         else AbstractDataset.from_config("rank_aware_wrapped", dict(dataset)))
        self._all_ranks_write = bool(all_ranks_write)
        self._barrier = bool(barrier)
        self._artifact_path = artifact_path
        self._memory: Any = _NOTHING
        self.metadata = metadata

    @property
    def wrapped(self) -> AbstractDataset:
        return self._dataset

    def _writes(self) -> bool:
        return self._all_ranks_write or process_rank() == 0

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "all_ranks_write": self._all_ranks_write,
                "barrier": self._barrier, "artifact_path": self._artifact_path}

    def _exists(self) -> bool:
        return self._memory is not _NOTHING or self._dataset.exists()

    def load(self) -> Any:
        if self._writes() or self._memory is _NOTHING:
            return self._dataset.load()
        return self._memory

    def save(self, data: Any) -> None:
        if self._writes():
            self._dataset.save(data)
            if self._artifact_path is not None and process_rank() == 0:
                self._log_artifact()
        else:
            self._memory = data
        if self._barrier:
            distributed_barrier()

    def _log_artifact(self) -> None:
        from generatect_kedro.training.tracking import log_artifact

        path = getattr(self._dataset, "_filepath", None)
        if path is not None and Path(str(path)).is_file():
            log_artifact(str(path), self._artifact_path)
