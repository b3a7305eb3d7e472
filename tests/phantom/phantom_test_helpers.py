"""Reading back what the phantom cohort wrote, independently of the code that wrote it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom

from generatect_kedro.phantom.cohort import PhantomCohortConfig

# Fewer, smaller slices than the demo default: the files exercise the same code paths, faster.
SMALL_CONFIG = PhantomCohortConfig(matrix_choices=(32,), slice_count_range=(8, 12))
SMALL_PATIENTS, SMALL_SEED = 5, 11


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_series(folder: Path, series_uid: str | None = None) -> list[pydicom.Dataset]:
    """Every readable CT slice file in a folder (optionally one series), ordered along the slice normal."""
    datasets = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        if series_uid is None or ds.SeriesInstanceUID == series_uid:
            datasets.append(ds)
    return sorted(datasets, key=slice_position)


def slice_position(ds: pydicom.Dataset) -> float:
    row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
    return float(np.asarray(ds.ImagePositionPatient, float) @ np.cross(row, col))


def hu_of(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
