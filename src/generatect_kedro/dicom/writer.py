"""Write a CT series the way a scanner stores it: one CT Image Storage file per axial slice.

Used by the phantom demo cohort and (later) by synthetic DICOM output. Stored values are
`round((HU - intercept) / slope)` in the storage type (unsigned or two's complement), clipped to the
BitsStored range exactly as a scanner does.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from generatect_kedro.utils.atomic import atomic_path


@dataclass(frozen=True)
class SeriesGeometry:
    """Where the slices lie in DICOM patient space (LPS+, mm)."""

    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM PixelSpacing
    slice_spacing: float  # distance between consecutive slice positions along the normal
    origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)  # ImagePositionPatient of slice 0
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction along a row (increasing column)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction down a column
    slice_thickness: float | None = None  # defaults to slice_spacing

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction, float), np.asarray(self.column_direction, float))

    def position(self, index: int) -> np.ndarray:
        return np.asarray(self.origin_lps, float) + index * self.slice_spacing * self.normal


@dataclass(frozen=True)
class StorageEncoding:
    """How HU become stored pixel values (RescaleSlope/RescaleIntercept and the integer type)."""

    slope: float = 1.0
    intercept: float = -1024.0
    unsigned: bool = True
    bits_stored: int = 12

    def to_stored(self, hu: np.ndarray) -> np.ndarray:
        if self.slope <= 0:
            raise ValueError(f"RescaleSlope must be positive, got {self.slope}")
        stored = np.rint((np.asarray(hu, np.float64) - self.intercept) / self.slope)
        if self.unsigned:
            low, high, dtype = 0, 2**self.bits_stored - 1, np.uint16
        else:
            low, high, dtype = -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1, np.int16
        return np.clip(stored, low, high).astype(dtype)


def _format_ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def build_slice_dataset(
    stored: np.ndarray,
    index: int,
    geometry: SeriesGeometry,
    encoding: StorageEncoding,
    tags: Mapping[str, object],
) -> Dataset:
    """One CT Image Storage dataset for slice `index` (0-based, along the normal)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    today = _dt.date(2024, 1, 1).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.InstanceNumber = index + 1
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = tags.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    ds.KVP = "120"

    position = geometry.position(index)
    ds.ImagePositionPatient = [_format_ds(v) for v in position]
    ds.ImageOrientationPatient = [_format_ds(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    ds.SliceLocation = _format_ds(float(position @ geometry.normal))
    ds.PixelSpacing = [_format_ds(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = _format_ds(geometry.slice_thickness or geometry.slice_spacing)
    ds.SpacingBetweenSlices = _format_ds(geometry.slice_spacing)

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0 if encoding.unsigned else 1
    ds.RescaleSlope = _format_ds(encoding.slope)
    ds.RescaleIntercept = _format_ds(encoding.intercept)
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if encoding.unsigned else "<i2").tobytes()

    for keyword, value in tags.items():
        if keyword != "FrameOfReferenceUID" and value is not None:
            setattr(ds, keyword, value)
    return ds


def write_ct_series(
    hu_slices: np.ndarray,
    folder: str | Path,
    geometry: SeriesGeometry,
    encoding: StorageEncoding = StorageEncoding(),
    tags: Mapping[str, object] | None = None,
    file_names: Sequence[str] | Callable[[int], str] | None = None,
) -> list[Path]:
    """Write `hu_slices` (slice, row, column) as one DICOM file per slice; return the paths written.

    `tags` adds or overrides header elements by keyword (PatientID, StudyInstanceUID, Manufacturer…);
    series-level UIDs missing from it are generated once and shared by every slice.
    """
    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim != 3:
        raise ValueError(f"expected (slice, row, column) HU, got shape {hu_slices.shape}")
    tags = dict(tags or {})
    for uid_keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        tags.setdefault(uid_keyword, generate_uid())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    paths = []
    for index in range(hu_slices.shape[0]):
        if file_names is None:
            name = f"IM{index + 1:05d}.dcm"
        elif callable(file_names):
            name = file_names(index)
        else:
            name = file_names[index]
        ds = build_slice_dataset(encoding.to_stored(hu_slices[index]), index, geometry, encoding, tags)
        target = folder / name
        with atomic_path(target) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        paths.append(target)
    return paths
