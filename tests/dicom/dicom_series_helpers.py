"""Helpers for DICOM ingestion tests: series with known HU under random names, in random order."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom

from generatect_kedro.dicom.writer import SeriesGeometry, StorageEncoding, write_ct_series


def known_hu(slices: int = 6, rows: int = 5, columns: int = 7) -> np.ndarray:
    """(slice, row, column) HU where every voxel is distinct and representable with slope 0.5."""
    k, r, c = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    return (-950.0 + 150.0 * k + 11.0 * r + 3.0 * c).astype(np.float64)


def write_shuffled(
    hu: np.ndarray,
    folder: Path,
    geometry: SeriesGeometry,
    encoding: StorageEncoding = StorageEncoding(),
    tags: dict | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a series under random hex names, then give its slices shuffled InstanceNumbers.

    Neither the file names nor InstanceNumber then tell the slice order; only ImagePositionPatient does.
    """
    rng = np.random.default_rng(seed)
    names = [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(hu.shape[0])]
    paths = write_ct_series(hu, folder, geometry, encoding, tags=tags, file_names=names)
    for path, number in zip(paths, rng.permutation(len(paths)) + 1, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(number)
        ds.save_as(path, enforce_file_format=True)
    return paths


def edit(path: Path, **changes: object) -> None:
    """Change (value) or delete (None) header elements of one file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def input_file_count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())
