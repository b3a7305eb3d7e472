"""`broken=True`: every manifest case exists on disk as described, and the good data around it stays valid."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydicom
import pytest
from phantom_test_helpers import read_csv, read_series, slice_position

EXPECTED_CODES = {"truncated", "not_dicom", "no_pixel_data", "missing_rescale", "not_ct", "localizer", "",
                  "duplicate_slice", "missing_slice", "inconsistent_orientation", "undecodable_transfer_syntax",
                  "unsafe_patient_id", "empty_impression", "unparseable_age"}


@pytest.fixture(scope="module")
def manifest(small_cohort):
    summary, _ = small_cohort
    rows = read_csv(summary.broken_manifest_csv)
    single = [row for row in rows if row["expected_reason_code"] != "not_dicom"]  # the two not_dicom rows differ
    by_code = {row["expected_reason_code"] or "mixed": row for row in single}
    return by_code, rows


def _path(small_cohort, row):
    return small_cohort[0].dicom_dir / row["path"]


def test_manifest_lists_every_case_once_with_its_code(small_cohort, manifest):
    _, rows = manifest
    assert list(rows[0]) == ["path", "study_id", "case", "expected_reason_code"]
    codes = Counter(row["expected_reason_code"] for row in rows)
    assert set(codes) == EXPECTED_CODES and codes["not_dicom"] == 2 and small_cohort[0].broken_cases == len(rows)
    for row in rows:
        if row["expected_reason_code"] == "empty_impression":
            assert row["path"] == ""
        else:
            assert _path(small_cohort, row).exists(), row
    study_ids = {r["study_id"] for r in read_csv(small_cohort[0].reports_csv)}
    assert {row["study_id"] for row in rows} <= study_ids


def test_file_level_cases(small_cohort, manifest):
    cases, rows = manifest
    truncated = pydicom.dcmread(_path(small_cohort, cases["truncated"]))
    assert len(truncated.PixelData) < truncated.Rows * truncated.Columns * 2
    for row in rows:
        if row["expected_reason_code"] == "not_dicom":
            with pytest.raises(pydicom.errors.InvalidDicomError):
                pydicom.dcmread(_path(small_cohort, row))
    pixel_less = pydicom.dcmread(_path(small_cohort, cases["no_pixel_data"]))
    assert pixel_less.Modality == "CT" and "PixelData" not in pixel_less
    localizer_path = _path(small_cohort, cases["localizer"])
    localizer = pydicom.dcmread(localizer_path)
    assert list(localizer.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"] and localizer.Modality == "CT"
    assert any(pydicom.dcmread(p).ImageType[2] == "AXIAL" for p in localizer_path.parent.glob("IM0*.dcm"))
    duplicate = _path(small_cohort, cases["duplicate_slice"])
    twins = [p for p in duplicate.parent.iterdir() if p != duplicate and p.read_bytes() == duplicate.read_bytes()]
    assert len(twins) == 1


def test_the_series_beside_the_junk_is_valid_without_the_truncated_slice(small_cohort, manifest):
    cases, _ = manifest
    truncated = _path(small_cohort, cases["truncated"])
    series_uid = pydicom.dcmread(truncated, stop_before_pixels=True).SeriesInstanceUID
    good = [ds for ds in read_series(truncated.parent, series_uid) if len(ds.PixelData) == ds.Rows * ds.Columns * 2]
    steps = np.diff([slice_position(ds) for ds in good])
    assert len(good) >= 7 and np.allclose(steps, steps[0]) and slice_position(pydicom.dcmread(truncated)) > \
        max(slice_position(ds) for ds in good)  # the cut-short file was the top slice: no gap remains


def test_mixed_series_are_two_valid_ct_series(small_cohort, manifest):
    cases, _ = manifest
    folder = _path(small_cohort, cases["mixed"])
    datasets = read_series(folder)
    by_series = Counter(ds.SeriesInstanceUID for ds in datasets)
    assert len(by_series) == 2 and len({ds.StudyInstanceUID for ds in datasets}) == 1
    for series_uid in by_series:
        series = read_series(folder, series_uid)
        steps = np.diff([slice_position(ds) for ds in series])
        assert all(ds.Modality == "CT" and "RescaleSlope" in ds for ds in series)
        assert len(series) >= 4 and np.allclose(steps, float(series[0].SpacingBetweenSlices))


def test_series_level_cases(small_cohort, manifest):
    cases, _ = manifest
    assert all("RescaleSlope" not in ds and "RescaleIntercept" in ds
               for ds in read_series(_path(small_cohort, cases["missing_rescale"])))
    assert {ds.Modality for ds in read_series(_path(small_cohort, cases["not_ct"]))} == {"MR"}
    gapped = read_series(_path(small_cohort, cases["missing_slice"]))
    steps = np.diff([slice_position(ds) for ds in gapped])
    assert sorted(np.round(steps / steps.min(), 3).tolist())[-1] == 2.0 and (np.round(steps / steps.min()) == 1).sum() \
        == len(steps) - 1
    orientations = Counter(tuple(ds.ImageOrientationPatient) for ds in
                           (pydicom.dcmread(p, stop_before_pixels=True)
                            for p in _path(small_cohort, cases["inconsistent_orientation"]).iterdir()))
    assert sorted(orientations.values())[0] == 1 and len(orientations) == 2


def test_undecodable_series(small_cohort, manifest):
    cases, _ = manifest
    paths = list(_path(small_cohort, cases["undecodable_transfer_syntax"]).iterdir())
    assert paths
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        with pytest.raises((RuntimeError, ValueError, NotImplementedError)):
            _ = ds.pixel_array


def test_header_and_report_cases(small_cohort, manifest):
    cases, _ = manifest
    unsafe = read_series(_path(small_cohort, cases["unsafe_patient_id"]))
    assert {ds.PatientID for ds in unsafe} == {"../../etc/passwd"}
    assert ".." not in cases["unsafe_patient_id"]["path"]  # the export itself never used the id as a path
    assert {ds.PatientAge for ds in read_series(_path(small_cohort, cases["unparseable_age"]))} == {"ABC"}
    reports = {row["study_id"]: row for row in read_csv(small_cohort[0].reports_csv)}
    assert reports[cases["empty_impression"]["study_id"]]["impression"] == ""
    assert sum(row["impression"] == "" for row in reports.values()) == 1
    truth = {row["study_id"]: row for row in read_csv(small_cohort[0].truth_csv)}
    assert truth[cases["unparseable_age"]["study_id"]]["age"] == ""


def test_broken_studies_are_not_mixed_into_good_folders(small_cohort, manifest):
    summary, specs = small_cohort
    good_folders = {spec.series_folder() for spec in specs}
    for row in manifest[1]:
        if row["path"]:
            assert not any(row["path"] == f or row["path"].startswith(f + "/") for f in good_folders), row
