"""Kedro dataset for one model grid: a `.safetensors` file with `volume` (D, H, W) and `affine` (4×4).

safetensors: no pickle, memory-mappable, readable from any language. The file holds

* ``volume`` — float16 or float32, (D, H, W) display order, values in [-1, 1];
* ``affine`` — float64 4×4, voxel (i, j, k) of ``from_dhw(volume)`` → RAS+ mm (see `cohort.grids`);
* string metadata (layout, HU window, resize mode, source shape).

Writes are atomic (temporary sibling + rename), so a crashed run never leaves half a grid behind.
Local paths only (``file://`` accepted), like the project's other volume datasets.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from safetensors import safe_open

from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.utils.atomic import atomic_write_bytes
from generatect_kedro.utils.safetensors_bytes import dumps_numpy

ALLOWED_DTYPES = ("float16", "float32")


class GridVolumeDataset(AbstractDataset[GridVolume, GridVolume]):
    """Save/load a `GridVolume`; `dtype` (optional) casts the volume on save."""

    def __init__(self, filepath: str, dtype: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        if filepath.startswith("file://"):
            filepath = filepath[len("file://") :]
        if "://" in filepath:
            raise DatasetError(f"GridVolumeDataset writes local files only, got {filepath!r}")
        if dtype is not None and dtype not in ALLOWED_DTYPES:
            raise DatasetError(f"dtype must be one of {ALLOWED_DTYPES}, got {dtype!r}")
        self._filepath = PurePosixPath(filepath)
        self._dtype = dtype
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "dtype": self._dtype}

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def load(self) -> GridVolume:
        path = Path(self._filepath)
        if not path.is_file():
            raise DatasetError(f"no grid at {path}")
        with safe_open(str(path), framework="numpy") as handle:
            meta = dict(handle.metadata() or {})
            volume, affine = handle.get_tensor("volume"), handle.get_tensor("affine")
        return GridVolume(volume, affine.astype(np.float64), meta)

    def save(self, data: GridVolume | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = GridVolume(np.asarray(data["volume"]), np.asarray(data["affine"]), dict(data.get("meta", {})))
        volume = np.asarray(data.volume)
        if self._dtype is not None:
            volume = volume.astype(self._dtype)
        if volume.dtype.name not in ALLOWED_DTYPES:
            raise DatasetError(f"grid volume must be float16 or float32, got {volume.dtype}")
        payload = dumps_numpy(
            {"volume": np.ascontiguousarray(volume), "affine": np.ascontiguousarray(data.affine, dtype=np.float64)},
            metadata=data.meta,
        )
        atomic_write_bytes(self._filepath, payload)
