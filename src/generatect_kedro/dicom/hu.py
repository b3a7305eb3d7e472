"""DICOM slices → one `HUVolume` (int16 HU, real affine, canonical RAS+).

Orientation convention (the one every stored volume follows, see `generatect_kedro.volume`):

* Intensities: HU = RescaleSlope · stored + RescaleIntercept, with **each slice's own** slope and intercept as
  floats (the released code int-casts both, which breaks slopes such as 0.5), then clipped to the configured
  HU window and rounded to int16.
* Slices are ordered along the slice normal n = row direction × column direction (both from
  ImageOrientationPatient) by the projection n · ImagePositionPatient, ascending. File names and
  InstanceNumber are never used.
* Array order is NIfTI's: i = DICOM column index, j = DICOM row index, k = slice index (ascending along n),
  i.e. `pixel_array.T` stacked along the last axis.
* DICOM patient space is LPS+. Voxel (i, j, k) sits at
  IPP_0 + i·Δc·r + j·Δr·c + k·Δk·n (LPS mm), where r/c are the row/column direction cosines,
  Δc = PixelSpacing[1] (between columns), Δr = PixelSpacing[0] (between rows), Δk = the median measured step
  between slice positions and IPP_0 is the position of the first slice. The RAS+ affine is that matrix with its x and y rows negated.
* Finally the volume is reoriented to the closest canonical RAS+ orientation (`volume.canonical`: flips and
  permutations only, never resampling): i runs from the patient's left to right (R+), j from posterior to
  anterior (A+), k from inferior to superior (S+).

Gantry tilt (slice positions not moving along the normal) is not represented: the affine uses n·Δk.
A single slice (e.g. pydicom's `CT_small.dcm`) gets SpacingBetweenSlices, else SliceThickness, else 1 mm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pydicom

from generatect_kedro.volume import HUVolume, canonical, hu_to_int16

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)


def slice_normal(orientation: Iterable[float]) -> np.ndarray:
    """Unit normal of a slice from its 6 ImageOrientationPatient cosines (row × column)."""
    values = np.asarray(list(orientation), dtype=np.float64)
    normal = np.cross(values[:3], values[3:6])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column directions are parallel")
    return normal / norm


def stored_to_hu(ds: pydicom.Dataset) -> np.ndarray:
    """Float HU of one slice, (rows, columns), from its own RescaleSlope/RescaleIntercept."""
    slope = float(ds.RescaleSlope)
    intercept = float(ds.RescaleIntercept)
    stored = np.asarray(ds.pixel_array)
    if stored.ndim != 2:
        raise ValueError(f"expected a single-frame greyscale slice, got pixel array shape {stored.shape}")
    return stored.astype(np.float64) * slope + intercept


def dicom_affine_ras(
    origin_lps: Iterable[float],
    orientation: Iterable[float],
    pixel_spacing: Iterable[float],
    slice_step: float,
) -> np.ndarray:
    """Voxel (i=column, j=row, k=slice) → RAS+ mm affine of an axial DICOM stack (see module docstring)."""
    iop = np.asarray(list(orientation), dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:6]
    between_rows, between_columns = (float(v) for v in pixel_spacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * between_columns
    affine_lps[:3, 1] = col_dir * between_rows
    affine_lps[:3, 2] = slice_normal(iop) * float(slice_step)
    affine_lps[:3, 3] = np.asarray(list(origin_lps), dtype=np.float64)
    return LPS_TO_RAS @ affine_lps


def _single_slice_step(ds: pydicom.Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def volume_from_datasets(
    datasets: Iterable[pydicom.Dataset],
    hu_window: Iterable[float] = DEFAULT_HU_WINDOW,
    meta: dict[str, Any] | None = None,
) -> HUVolume:
    """Stack the slices of one series into a canonical RAS+ int16 HU volume (one slice in memory as float).

    Slices may come in any order; they are sorted by position along the normal of the first slice.
    """
    low, high = (float(v) for v in hu_window)
    if low >= high:
        raise ValueError(f"HU window must be increasing, got [{low}, {high}]")
    planes: list[np.ndarray] = []
    positions: list[float] = []
    origins: list[np.ndarray] = []
    slopes: list[float] = []
    intercepts: list[float] = []
    first: pydicom.Dataset | None = None
    normal = None
    for ds in datasets:
        if first is None:
            first = ds
            normal = slice_normal(ds.ImageOrientationPatient)
        hu = np.clip(stored_to_hu(ds), low, high)
        planes.append(hu_to_int16(hu).T)  # (rows, columns) → (i=column, j=row)
        origins.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        positions.append(float(origins[-1] @ normal))
        slopes.append(float(ds.RescaleSlope))
        intercepts.append(float(ds.RescaleIntercept))
    if first is None:
        raise ValueError("a series needs at least one slice")
    if len({plane.shape for plane in planes}) != 1:
        raise ValueError(f"slices have different matrices: {sorted({p.shape for p in planes})}")

    order = np.argsort(np.asarray(positions), kind="stable")
    data = np.stack([planes[index] for index in order], axis=-1)
    sorted_positions = np.asarray(positions)[order]
    if len(planes) > 1:
        step = float(np.median(np.diff(sorted_positions)))
        if not step > 0:
            raise ValueError("slices share one position; cannot measure the slice step")
    else:
        step = _single_slice_step(first)
    origin = origins[int(order[0])]
    affine = dicom_affine_ras(origin, first.ImageOrientationPatient, first.PixelSpacing, step)

    volume_meta = dict(meta or {})
    volume_meta.update(
        source=volume_meta.get("source", "dicom"),
        hu_window=[low, high],
        slice_step_mm=round(step, 6),
        rescale_slope_min=min(slopes),
        rescale_slope_max=max(slopes),
        rescale_intercept_min=min(intercepts),
        rescale_intercept_max=max(intercepts),
    )
    return canonical(HUVolume(data, affine, volume_meta))


def volume_from_files(
    paths: Iterable[Any], hu_window: Iterable[float] = DEFAULT_HU_WINDOW, meta: dict[str, Any] | None = None
) -> HUVolume:
    """`volume_from_datasets` over files read one at a time."""
    return volume_from_datasets((pydicom.dcmread(path) for path in paths), hu_window, meta)

