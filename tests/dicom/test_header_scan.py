"""Header scan: one row per file whatever its name, pixel data never read, truncation detected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from generatect_kedro.dicom import headers
from generatect_kedro.dicom.headers import HEADER_COLUMNS, list_files, scan_headers
from generatect_kedro.dicom.writer import SeriesGeometry, StorageEncoding, write_ct_series


def test_rows_for_every_file_and_values(tmp_path):
    write_ct_series(np.zeros((2, 4, 5)), tmp_path / "deep" / "er", SeriesGeometry((0.5, 0.6), 2.0, (1, 2, 3)),
                    StorageEncoding(0.5, -1024.0), {"PatientAge": "058Y", "PatientSex": "F", "Manufacturer": "ACME",
                                                     "AccessionNumber": "00012"}, file_names=["x", "y.txt"])
    (tmp_path / ".hidden").write_bytes(b"\x00" * 10)
    frame = scan_headers(tmp_path, progress=False)
    assert list(frame.columns) == HEADER_COLUMNS
    assert list(frame["path"]) == list_files(tmp_path) == [".hidden", "deep/er/x", "deep/er/y.txt"]
    row = frame.set_index("path").loc["deep/er/x"]
    assert row["readable"] and row["decodable"] and row["has_pixel_data"] and row["pixel_length_ok"]
    assert (row["Rows"], row["Columns"], row["RescaleSlope"], row["RescaleIntercept"]) == (4, 5, 0.5, -1024.0)
    assert row["ImagePositionPatient"] == (1.0, 2.0, 3.0) and row["PixelSpacing"] == (0.5, 0.6)
    assert (row["PatientAge"], row["PatientSex"], row["AccessionNumber"]) == ("058Y", "F", "00012")
    assert row["ImageType"] == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert not frame.set_index("path").loc[".hidden", "readable"]


def test_truncated_pixel_data_is_detected(tmp_path):
    data = open(get_testdata_file("CT_small.dcm", download=False), "rb").read()
    (tmp_path / "whole").write_bytes(data)
    (tmp_path / "cut").write_bytes(data[:-2000])
    frame = scan_headers(tmp_path, progress=False).set_index("path")
    assert frame.loc["whole", "pixel_length_ok"] and not frame.loc["cut", "pixel_length_ok"]
    assert frame.loc["whole", "RescaleIntercept"] == -1024.0
    assert frame.loc["whole", "PatientID"] == "1CT1"  # raw, in memory only


def test_pixel_data_stays_deferred(monkeypatch):
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    opened, real_dcmread = [], pydicom.dcmread

    def spy(*args, **kwargs):
        opened.append(real_dcmread(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(headers.pydicom, "dcmread", spy)
    headers.read_header(path.parent, path.name)
    assert opened[0].get_item(headers.PIXEL_DATA_TAG, keep_deferred=True).value is None
