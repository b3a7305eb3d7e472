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
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from generatect_kedro.utils.atomic import atomic_path, atomic_write_bytes


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


def derived_uid(*parts: object) -> str:
    """A UID that is a pure function of `parts` (pydicom's hashed UID under its own root).

    Used wherever output must be reproducible byte for byte (the demo cohort): the same parts always give
    the same UID, different parts practically never collide.
    """
    return generate_uid(entropy_srcs=[str(part) for part in parts])


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
    *,
    sop_instance_uid: str | None = None,
    instance_number: int | None = None,
) -> Dataset:
    """One CT Image Storage dataset for slice `index` (0-based, along the normal).

    `sop_instance_uid` (default: a fresh random UID) and `instance_number` (default: index + 1) let
    callers make output reproducible or number slices head-first.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    today = _dt.date(2024, 1, 1).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = tags.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    ds.KVP = "120"

    ds.ImageOrientationPatient = [_format_ds(v) for v in (*geometry.row_direction, *geometry.column_direction)]
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
    _set_slice_elements(ds, stored, index, geometry, encoding, sop_instance_uid, instance_number)
    _apply_tags(ds, tags)
    return ds


# Elements that differ between the slices of one series; everything else is shared.
_SLICE_KEYWORDS = frozenset({"SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData"})


def _set_slice_elements(ds: Dataset, stored: np.ndarray, index: int, geometry: SeriesGeometry,
                        encoding: StorageEncoding, sop_instance_uid: str | None, instance_number: int | None) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = index + 1 if instance_number is None else int(instance_number)
    position = geometry.position(index)
    ds.ImagePositionPatient = [_format_ds(v) for v in position]
    ds.SliceLocation = _format_ds(float(position @ geometry.normal))
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if encoding.unsigned else "<i2").tobytes()


def _apply_tags(ds: Dataset, tags: Mapping[str, object], only: frozenset[str] | None = None) -> None:
    for keyword, value in tags.items():
        if keyword != "FrameOfReferenceUID" and value is not None and (only is None or keyword in only):
            setattr(ds, keyword, value)


def write_ct_series(
    hu_slices: np.ndarray,
    folder: str | Path,
    geometry: SeriesGeometry,
    encoding: StorageEncoding = StorageEncoding(),
    tags: Mapping[str, object] | None = None,
    file_names: Sequence[str] | Callable[[int], str] | None = None,
    *,
    uid_entropy: Sequence[object] | None = None,
    instance_numbers: Sequence[int] | None = None,
) -> list[Path]:
    """Write `hu_slices` (slice, row, column) as one DICOM file per slice; return the paths written.

    `tags` adds or overrides header elements by keyword (PatientID, StudyInstanceUID, Manufacturer…);
    series-level UIDs missing from it are generated once and shared by every slice.
    `uid_entropy`, when given, makes every generated UID (series-level and SOPInstanceUID) a function of
    it, so the same call writes byte-identical files (see `sop_instance_uid`). `instance_numbers` gives the
    InstanceNumber of each slice index (default index + 1; a descending list stores the series head-first).
    """
    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim != 3:
        raise ValueError(f"expected (slice, row, column) HU, got shape {hu_slices.shape}")
    tags = dict(tags or {})
    for uid_keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not tags.get(uid_keyword):
            tags[uid_keyword] = derived_uid(*uid_entropy, uid_keyword) if uid_entropy else generate_uid()
    if instance_numbers is not None and len(instance_numbers) != hu_slices.shape[0]:
        raise ValueError(f"{len(instance_numbers)} instance numbers for {hu_slices.shape[0]} slices")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    paths = []
    ds = encoder = None
    for index in range(hu_slices.shape[0]):
        if file_names is None:
            name = f"IM{index + 1:05d}.dcm"
        elif callable(file_names):
            name = file_names(index)
        else:
            name = file_names[index]
        stored = encoding.to_stored(hu_slices[index])
        uid = sop_instance_uid(uid_entropy, index) if uid_entropy else None
        number = None if instance_numbers is None else instance_numbers[index]
        if ds is None:
            ds = build_slice_dataset(stored, index, geometry, encoding, tags, sop_instance_uid=uid,
                                     instance_number=number)
            encoder = _SliceEncoder(ds) if "SpecificCharacterSet" not in ds else None
        else:  # building a dataset costs more than writing it: reuse it, change only per-slice elements
            _set_slice_elements(ds, stored, index, geometry, encoding, uid, number)
            _apply_tags(ds, tags, only=_SLICE_KEYWORDS)
        target = folder / name
        if encoder is not None:
            atomic_write_bytes(target, encoder.encode(ds))
        else:
            with atomic_path(target) as tmp:
                pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        paths.append(target)
    return paths


def sop_instance_uid(uid_entropy: Sequence[object], index: int) -> str:
    """The SOPInstanceUID `write_ct_series` gives slice `index` when called with `uid_entropy`.

    Public so that callers can name files after their UIDs before writing them.
    """
    return derived_uid(*uid_entropy, "SOPInstanceUID", index)


class _SliceEncoder:
    """Encodes the elements the slices of a series share once; each file then costs only its own elements.

    Gives exactly the bytes of `pydicom.dcmwrite(..., enforce_file_format=True)` for these explicit VR
    little endian datasets (tested), several times faster on series of many small slices.
    """

    def __init__(self, template: Dataset) -> None:
        self._parts: list[bytes | str] = []
        shared = Dataset()
        for element in template:  # a Dataset iterates in tag order, the order elements are written in
            if element.keyword in _SLICE_KEYWORDS:
                if len(shared):
                    self._parts.append(_encode(shared))
                    shared = Dataset()
                self._parts.append(element.keyword)
            else:
                shared.add(element)
        if len(shared):
            self._parts.append(_encode(shared))

    def encode(self, ds: Dataset) -> bytes:
        head = _buffer()
        head.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(head, ds.file_meta, enforce_standard=True)
        chunks = [head.getvalue()]
        for part in self._parts:
            chunks.append(part if isinstance(part, bytes) else _encode(Dataset({ds[part].tag: _resolved(ds, part)})))
        return b"".join(chunks)


def _resolved(ds: Dataset, keyword: str) -> DataElement:
    """The element with an ambiguous VR settled as dcmwrite would (16-bit pixel data is OW)."""
    element = ds[keyword]
    if element.VR == "OB or OW":
        return DataElement(element.tag, "OW" if int(ds.BitsAllocated) > 8 else "OB", element.value)
    return element


def _buffer() -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    return buffer


def _encode(dataset: Dataset) -> bytes:
    buffer = _buffer()
    write_dataset(buffer, dataset)
    return buffer.getvalue()
