"""Header scan of a DICOM export: one row per file, pixel data never loaded.

Exports arrive with any file names (`IM0001`, `1.2.840…`, no extension, `DICOMDIR`, stray `.DS_Store`), so every
regular file under the root is opened and classified; nothing relies on extensions. Headers are read with
deferred pixel data, and the pixel data element's declared length is checked against the file size and the
image matrix, which detects truncated copies without decoding anything.

`PatientID` is kept raw in the returned frame *in memory only*: planning turns it into a pseudonym and checks
that it is safe; it must never be written to disk or logs (the frame is never saved by this project).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import ImplicitVRLittleEndian

logger = logging.getLogger(__name__)

PIXEL_DATA_TAG = 0x7FE00010
DEFER_SIZE = 1024  # bytes; larger element values (pixel data) are read only when accessed
_DICM_OFFSET = 128
_SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF

#: Columns of the header frame, in order. Multi-valued attributes are tuples (floats or strings).
HEADER_COLUMNS = [
    "path", "file_size", "readable", "error", "has_dicm_prefix",
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber", "PatientID",
    "PatientAge", "PatientSex", "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "RescaleSlope", "RescaleIntercept",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "TransferSyntaxUID", "decodable",
    "has_pixel_data", "pixel_length_ok", "header_complete", "Manufacturer", "InstanceNumber",
]


def list_files(root: str | os.PathLike) -> list[str]:
    """Every regular file under `root`, as sorted POSIX paths relative to it (no extension filter)."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = Path(folder) / name
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found)


def scan_headers(root: str | os.PathLike, *, progress: bool = True, force: bool = False) -> pd.DataFrame:
    """Read every file's header under `root` (see `HEADER_COLUMNS`); unreadable files get `readable=False`.

    `force=True` also parses files without the 128-byte preamble and `DICM` prefix (old ACR-NEMA style);
    off by default because it makes pydicom "read" arbitrary bytes.
    """
    root = Path(root)
    paths = list_files(root)
    iterator: Any = paths
    if progress and len(paths) > 200:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="DICOM headers", unit="file", mininterval=2.0)
    rows = [read_header(root, rel, force=force) for rel in iterator]
    # object dtype keeps None as None (pandas would turn missing strings into NaN) and tuples intact
    frame = pd.DataFrame(rows, columns=HEADER_COLUMNS, dtype=object)
    readable = int(frame["readable"].sum()) if len(frame) else 0
    logger.info("scanned %d files under the DICOM root: %d readable", len(frame), readable)
    return frame


def read_header(root: Path, rel: str, *, force: bool = False) -> dict[str, Any]:
    """One header row for `root / rel`; never raises for a bad file (the error goes in the row)."""
    full = root / rel
    size = full.stat().st_size
    row: dict[str, Any] = {column: None for column in HEADER_COLUMNS}
    row.update(path=rel, file_size=size, readable=False, has_dicm_prefix=_has_dicm_prefix(full))
    try:
        ds = pydicom.dcmread(full, defer_size=DEFER_SIZE, force=force)
    except InvalidDicomError:
        row["error"] = "no 'DICM' prefix after a 128-byte preamble: not a DICOM Part 10 file"
        return row
    except Exception as exc:  # noqa: BLE001 - any parse failure is a property of the file
        row["error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        return row
    try:
        row.update(_header_values(ds, full, size))
        row["readable"] = True
    except Exception as exc:  # noqa: BLE001 - malformed values (e.g. a DS that is not a number)
        row["error"] = f"malformed header: {type(exc).__name__}: {_first_line(exc)}"
    return row


def _header_values(ds: pydicom.Dataset, full: Path, size: int) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    transfer_syntax = transfer_syntax or ImplicitVRLittleEndian
    pixel_element = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    return {
        "SOPInstanceUID": _text(ds, "SOPInstanceUID"),
        "SeriesInstanceUID": _text(ds, "SeriesInstanceUID"),
        "StudyInstanceUID": _text(ds, "StudyInstanceUID"),
        "AccessionNumber": _text(ds, "AccessionNumber"),
        "PatientID": _text(ds, "PatientID"),
        "PatientAge": _text(ds, "PatientAge"),
        "PatientSex": _text(ds, "PatientSex"),
        "Modality": _text(ds, "Modality"),
        "ImageType": _strings(ds, "ImageType"),
        "ImagePositionPatient": _floats(ds, "ImagePositionPatient", 3),
        "ImageOrientationPatient": _floats(ds, "ImageOrientationPatient", 6),
        "PixelSpacing": _floats(ds, "PixelSpacing", 2),
        "SliceThickness": _float(ds, "SliceThickness"),
        "Rows": _int(ds, "Rows"),
        "Columns": _int(ds, "Columns"),
        "RescaleSlope": _float(ds, "RescaleSlope"),
        "RescaleIntercept": _float(ds, "RescaleIntercept"),
        "BitsAllocated": _int(ds, "BitsAllocated"),
        "BitsStored": _int(ds, "BitsStored"),
        "PixelRepresentation": _int(ds, "PixelRepresentation"),
        "TransferSyntaxUID": transfer_syntax,
        "decodable": _decodable(transfer_syntax),
        "has_pixel_data": pixel_element is not None,
        "pixel_length_ok": _pixel_length_ok(ds, pixel_element, full, size, transfer_syntax),
        "header_complete": _header_complete(ds, size),
        "Manufacturer": _text(ds, "Manufacturer"),
        "InstanceNumber": _int(ds, "InstanceNumber"),
    }


def _pixel_length_ok(ds: pydicom.Dataset, element: Any, full: Path, size: int, transfer_syntax: str) -> bool:
    """False when the pixel data cannot be complete: it runs past the end of the file or is shorter than the matrix."""
    if element is None:
        return False
    length = getattr(element, "length", None)
    value = getattr(element, "value", None)
    if length == _UNDEFINED_LENGTH or getattr(element, "is_undefined_length", False):
        # Encapsulated (compressed) fragments: a complete file ends its fragment sequence with a delimiter.
        with open(full, "rb") as handle:
            handle.seek(max(0, size - 4096))
            return _SEQUENCE_DELIMITER_LE in handle.read()
    if value is None:  # deferred read: the declared span must fit in the file
        if int(element.value_tell) + int(length) > size:
            return False
        available = int(length)
    else:
        available = len(value) if isinstance(value, (bytes, bytearray)) else 0
    expected = _expected_native_length(ds)
    return expected is None or available >= expected


def _header_complete(ds: pydicom.Dataset, size: int) -> bool:
    """False when a header element's declared value runs past the end of the file (pydicom stops silently)."""
    # `_dict` rather than `elements()`: the latter reads deferred values (the pixel data) to convert them
    for element in ds._dict.values():
        tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
        if tell is None or length is None or length == _UNDEFINED_LENGTH:
            continue
        if int(tell) + int(length) > size:
            return False
    return True


def _expected_native_length(ds: pydicom.Dataset) -> int | None:
    try:
        rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return math.ceil(rows * columns * samples * frames * bits / 8)


def _decodable(transfer_syntax: str) -> bool:
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _has_dicm_prefix(full: Path) -> bool:
    try:
        with open(full, "rb") as handle:
            handle.seek(_DICM_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _strings(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return tuple(str(v).strip().upper() for v in values)


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    if len(values) != count:
        return None
    return tuple(float(v) for v in values)


def _float(ds: pydicom.Dataset, keyword: str) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return math.nan
    return float(value)


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)
