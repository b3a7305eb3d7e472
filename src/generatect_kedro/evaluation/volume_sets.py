"""Labelled volume sets that stream from disk, so evaluation never needs a whole cohort in memory.

At paper scale one 201×512×512 float32 grid is 210 MB: a test split of a thousand volumes cannot be stacked.
A `VolumeSet` holds one loader per volume and loads (and resizes) on access. It is at once

* a map-style classifier dataset (item i → ((1, D, H, W) grid, (L,) labels), `labels` readable as a whole,
  which is what `train_classifier` expects), and
* an iterable of (D, H, W) grids for the Fréchet metrics (`grids()`).

Real volumes come from the preprocessing grids (`GridVolume`, values in [-1, 1]); generated ones from the
int16 HU NIfTI files generation writes, scaled with the HU window the grids were made with, so both sets
meet the classifier on the same scale. `shape` resizes every grid (trilinear) to one classifier input shape:
paper-scale grids are usually evaluated at a reduced in-plane size, as CT-Net was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from generatect_kedro.cohort.grids import scale_hu
from generatect_kedro.volume import to_dhw

__all__ = ["VolumeSet", "grid_from_hu", "nifti_grid_loader", "partition_grid_loader", "predict_scores",
           "resize_grid"]

GridLoader = Callable[[], np.ndarray]


def grid_from_hu(hu_dhw: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """HU → the grid scale [-1, 1], exactly as preprocessing scaled the real grids."""
    return scale_hu(hu_dhw, hu_window).astype(np.float32)


def resize_grid(grid: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    """(D, H, W) float32 at `shape` (trilinear); unchanged when `shape` is None or already equal."""
    grid = np.asarray(grid, dtype=np.float32)
    if shape is None or tuple(grid.shape) == tuple(int(s) for s in shape):
        return grid
    x = torch.from_numpy(np.ascontiguousarray(grid))[None, None]
    return F.interpolate(x, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def partition_grid_loader(load_partition: Callable[[], object]) -> GridLoader:
    """A `PartitionedDataset` loader of `GridVolume`s → a loader of its (D, H, W) float32 grid."""
    return lambda: np.asarray(load_partition().volume, dtype=np.float32)


def nifti_grid_loader(path: str | Path, hu_window: Sequence[float]) -> GridLoader:
    """A generated int16 HU NIfTI (canonical RAS+, `volume.from_dhw` layout) → its grid in [-1, 1]."""
    import nibabel as nib

    def load() -> np.ndarray:
        image = nib.load(str(path))
        hu = np.asarray(image.dataobj, dtype=np.float32)
        return grid_from_hu(to_dhw(hu), hu_window)

    return load


@dataclass
class VolumeSet:
    """Named lazily loaded grids with their (n, L) 0/1 labels; see the module docstring.

    `cache=True` keeps every loaded grid in memory: right for small sets that a classifier reads for many
    epochs (the demo), wrong at paper scale.
    """

    names: list[str]
    loaders: list[GridLoader]
    labels: np.ndarray
    shape: tuple[int, int, int] | None = None
    cache: bool = False
    _cached: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.float32)
        self.labels = labels.reshape(len(self.loaders), labels.shape[-1] if labels.ndim == 2 else -1)
        if len(self.names) != len(self.loaders):
            raise ValueError(f"{len(self.names)} names for {len(self.loaders)} volumes")
        if self.shape is not None:
            self.shape = tuple(int(s) for s in self.shape)

    def __len__(self) -> int:
        return len(self.loaders)

    def grid(self, index: int) -> np.ndarray:
        if index in self._cached:
            return self._cached[index]
        grid = resize_grid(self.loaders[index](), self.shape)
        if self.cache:
            self._cached[index] = grid
        return grid

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.grid(index))[None], torch.from_numpy(self.labels[index])

    def grids(self) -> Iterator[np.ndarray]:
        return (self.grid(i) for i in range(len(self)))

    def subset(self, indices: Sequence[int]) -> VolumeSet:
        indices = [int(i) for i in indices]
        return VolumeSet([self.names[i] for i in indices], [self.loaders[i] for i in indices],
                         self.labels[indices] if indices else self.labels[:0], self.shape, self.cache,
                         {j: self._cached[i] for j, i in enumerate(indices) if i in self._cached})

    def __add__(self, other: VolumeSet) -> VolumeSet:
        if self.labels.shape[1] != other.labels.shape[1]:
            raise ValueError("cannot join volume sets with different label columns")
        cached = {**self._cached, **{len(self) + i: g for i, g in other._cached.items()}}
        return VolumeSet(self.names + other.names, self.loaders + other.loaders,
                         np.concatenate([self.labels, other.labels]), self.shape or other.shape,
                         self.cache or other.cache, cached)


def predict_scores(model: torch.nn.Module, volumes: VolumeSet, batch_size: int = 4) -> np.ndarray:
    """Sigmoid probabilities (n, L), streaming the set batch by batch (never stacked whole)."""
    from generatect_kedro.evaluation.classifier_training import predict_probabilities

    if not len(volumes):
        return np.zeros((0, volumes.labels.shape[1]), dtype=np.float32)
    return predict_probabilities(model, volumes.grids(), batch_size)
