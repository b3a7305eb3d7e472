"""`DicomDirectoryDataset`: a folder of DICOM files as delivered, read-only, loaded as a `DicomIndex`.

Loading scans headers only (pixel data deferred); pixels are read later, series by series, through the
index, so thousands of series never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from kedro.io import AbstractDataset, DatasetError

from generatect_kedro.dicom.headers import scan_headers
from generatect_kedro.dicom.hu import DEFAULT_HU_WINDOW, stored_to_hu, volume_from_datasets
from generatect_kedro.volume import HUVolume


@dataclass
class DicomIndex:
    """Root folder + one header row per file (`dicom.headers.HEADER_COLUMNS`).

    The `PatientID` column is raw and exists in memory only; never save or log this frame.
    """

    root: Path
    headers: pd.DataFrame

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def __repr__(self) -> str:  # never show header values (patient ids) in logs or tracebacks
        return f"DicomIndex(root={str(self.root)!r}, files={len(self.headers)})"

    def full_path(self, rel: str) -> Path:
        path = (self.root / PurePosixPath(rel)).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"{rel!r} is outside the DICOM root")
        return path

    def read_series(self, rel_paths: Sequence[str]) -> Iterator[pydicom.Dataset]:
        """Full datasets (with pixels) of the given files, in the given order, one at a time."""
        for rel in rel_paths:
            yield pydicom.dcmread(self.full_path(rel))

    def read_slice_hu(self, rel: str) -> np.ndarray:
        """Float HU pixels of one file (its own slope and intercept), (rows, columns)."""
        return stored_to_hu(pydicom.dcmread(self.full_path(rel)))

    def read_volume(
        self, rel_paths: Sequence[str], hu_window: Sequence[float] = DEFAULT_HU_WINDOW, meta: dict | None = None
    ) -> HUVolume:
        """The canonical int16 HU volume of an ordered series (see `dicom.hu`)."""
        return volume_from_datasets(self.read_series(rel_paths), hu_window, meta)


class DicomDirectoryDataset(AbstractDataset[None, DicomIndex]):
    """Read-only Kedro dataset: `load()` scans the folder's headers and returns a `DicomIndex`.

    Catalog: `type: generatect_kedro.io.dicom_directory.DicomDirectoryDataset`, `path: data/01_raw/dicom`.
    """

    def __init__(
        self, path: str, progress: bool = True, force: bool = False, metadata: dict[str, Any] | None = None
    ) -> None:
        self._path = Path(path)
        self._progress = progress
        self._force = force
        self.metadata = metadata

    def load(self) -> DicomIndex:
        if not self._path.is_dir():
            raise DatasetError(f"DICOM folder {self._path} does not exist")
        return DicomIndex(self._path, scan_headers(self._path, progress=self._progress, force=self._force))

    def save(self, data: None) -> None:
        raise DatasetError("DicomDirectoryDataset is read-only: raw DICOM exports are never modified")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "force": self._force}
