"""The demo cohort on disk: deterministic bytes, HU that round-trip, consistent geometry, tags and tables."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from phantom_test_helpers import SMALL_CONFIG, SMALL_PATIENTS, SMALL_SEED, hu_of, read_csv, read_series, slice_position

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.cohort import (
    REPORT_COLUMNS,
    TRUTH_COLUMNS,
    PhantomCohortConfig,
    plan_cohort,
    write_demo_cohort,
)
from generatect_kedro.phantom.reports import LABEL_PHRASES
from generatect_kedro.phantom.studies import MODELS, NAMING_SCHEMES, STORAGE_PROFILES, render_study


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_other_seed_differs(small_cohort, tmp_path):
    summary, _ = small_cohort
    again, other = tmp_path / "again", tmp_path / "other"
    write_demo_cohort(again, SMALL_PATIENTS, SMALL_SEED, broken=True, config=SMALL_CONFIG)
    write_demo_cohort(other, 1, SMALL_SEED + 1, config=SMALL_CONFIG)
    written = _tree(summary.dicom_dir.parent)
    assert written == _tree(again) and "broken_manifest.csv" in written
    different = _tree(other)
    assert written["reports.csv"] != different["reports.csv"]
    same_name = [path for path in different if path.startswith("dicom/") and path in written]
    assert all(different[path] != written[path] for path in same_name)  # other UIDs, other pixels


def test_good_studies_do_not_depend_on_later_patients_or_broken_cases(small_cohort, tmp_path):
    summary, _ = small_cohort
    write_demo_cohort(tmp_path, 1, SMALL_SEED, config=SMALL_CONFIG)
    one, more = _tree(tmp_path / "dicom"), _tree(summary.dicom_dir)
    assert one and all(more.get(path) == payload for path, payload in one.items())


def test_stored_values_give_back_the_rendered_hu(small_cohort):
    """HU = stored × slope + intercept equals the phantom within rounding, for every storage profile."""
    summary, specs = small_cohort
    seen = set()
    for spec in specs:
        datasets = read_series(summary.dicom_dir / spec.series_folder())
        encoding = spec.encoding
        assert len(datasets) == spec.shape[0]
        hu = np.stack([hu_of(ds) for ds in datasets])
        assert np.abs(hu - render_study(spec)).max() <= encoding.slope / 2 + 1e-6
        ds = datasets[0]
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (encoding.slope, encoding.intercept)
        assert (ds.PixelRepresentation, ds.BitsStored) == (0 if encoding.unsigned else 1, encoding.bits_stored)
        seen.add(encoding)
    assert seen == set(STORAGE_PROFILES)  # unsigned 12-bit -1024, signed (-1024 and 0), slope 0.5 unsigned 16-bit


def test_geometry_tags_are_consistent(small_cohort):
    summary, specs = small_cohort
    truth = {row["study_id"]: row for row in read_csv(summary.truth_csv)}
    for spec in specs:
        row = truth[spec.accession]
        datasets = read_series(summary.dicom_dir / spec.series_folder())
        positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
        steps = np.diff(positions, axis=0)
        assert np.allclose(steps, [0, 0, float(row["slice_spacing"])], atol=1e-4)  # along the normal (+z, S)
        for ds in datasets:
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert [float(v) for v in ds.PixelSpacing] == [float(row["pixel_spacing"])] * 2
            assert (ds.Rows, ds.Columns) == (int(row["rows"]), int(row["cols"]))
            assert float(ds.SliceThickness) == float(row["slice_thickness"])
            assert abs(float(ds.SliceLocation) - slice_position(ds)) < 1e-4
        numbers = [int(ds.InstanceNumber) for ds in datasets]
        assert numbers == sorted(numbers, reverse=row["head_first"] == "1") and len(set(numbers)) == len(numbers)
    assert {row["head_first"] for row in truth.values() if not row["broken_case"]} == {"0", "1"}


def test_patient_and_study_tags(small_cohort):
    summary, specs = small_cohort
    study_uids, accessions = set(), set()
    manufacturers = set()
    for spec in specs:
        ds = read_series(summary.dicom_dir / spec.series_folder())[0]
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge) and int(ds.PatientAge[:3]) == spec.age
        assert ds.PatientSex in ("M", "F") and ds.PatientID == spec.patient.patient_id and "^" in str(ds.PatientName)
        assert ds.AccessionNumber == spec.accession and ds.StudyDescription and ds.Modality == "CT"
        assert ds.ManufacturerModelName == MODELS[ds.Manufacturer]
        study_uids.add(ds.StudyInstanceUID)
        accessions.add(ds.AccessionNumber)
        manufacturers.add(ds.Manufacturer)
    assert len(study_uids) == len(accessions) == len(specs)
    assert manufacturers == set(MODELS)


def test_follow_up_studies():
    specs = plan_cohort(60, 1)
    per_patient = Counter(spec.patient.patient_id for spec in specs)
    fraction = sum(count == 2 for count in per_patient.values()) / len(per_patient)
    assert 0.2 <= fraction <= 0.5
    by_patient: dict[str, list] = {}
    for spec in specs:
        by_patient.setdefault(spec.patient.patient_id, []).append(spec)
    for pair in (v for v in by_patient.values() if len(v) == 2):
        baseline, follow_up = pair
        assert baseline.labels != follow_up.labels and baseline.accession != follow_up.accession
        assert follow_up.study_date > baseline.study_date and follow_up.age >= baseline.age
        assert baseline.patient.anatomy == follow_up.patient.anatomy


def test_default_config_is_the_tiny_demo_grid():
    specs = plan_cohort(12, 0, PhantomCohortConfig())
    for spec in specs:
        slices, rows, cols = spec.shape
        assert rows == cols == 64 and 36 <= slices <= 72
        assert 320 / 64 - 1e-6 <= spec.pixel_spacing <= 400 / 64 + 1e-6 and 4 <= spec.slice_spacing <= 8
        assert 250 <= slices * spec.slice_spacing <= 350  # the whole chest, apex to upper abdomen
    assert {spec.naming for spec in specs} == set(NAMING_SCHEMES) and len({s.nesting for s in specs}) == 2


def test_file_naming_nesting_and_on_disk_order(small_cohort):
    summary, specs = small_cohort
    names = [p.name for spec in specs for p in (summary.dicom_dir / spec.series_folder()).iterdir()]
    assert any(re.fullmatch(r"IM\d{5}\.dcm", n) for n in names) and any(n.isdigit() for n in names)
    assert any(re.fullmatch(r"[\d.]{20,}\.dcm", n) for n in names)
    assert any(re.fullmatch(r"[A-Z0-9]{8}", n) for n in names)
    assert {len(spec.series_folder().split("/")) for spec in specs} == {1, 3}  # flat and patient/study/series
    out_of_order = 0
    for spec in specs:
        folder = summary.dicom_dir / spec.series_folder()
        by_name = [slice_position(pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted(folder.iterdir())]
        out_of_order += by_name != sorted(by_name)
    assert out_of_order >= 2


def test_reports_and_truth_tables(small_cohort):
    summary, specs = small_cohort
    reports = read_csv(summary.reports_csv)
    truth = read_csv(summary.truth_csv)
    assert tuple(reports[0]) == REPORT_COLUMNS and tuple(truth[0]) == TRUTH_COLUMNS
    assert [r["study_id"] for r in reports] == [t["study_id"] for t in truth]
    assert len({r["study_id"] for r in reports}) == len(reports) == summary.studies
    by_id = {r["study_id"]: r for r in reports}
    for spec, row in zip(specs, truth, strict=False):  # good studies first, then the broken extras
        assert row["study_id"] == spec.accession and row["patient_id"] == spec.patient.patient_id
        assert {label for label in CT_RATE_LABELS if row[label] == "1"} == spec.labels
        report = by_id[spec.accession]
        for label in spec.labels:
            assert any(p in report["impression"].lower() for p in LABEL_PHRASES[label])
        assert report["impression"]
    assert summary.patients == len({t["patient_id"] for t in truth})
    assert summary.files == sum(1 for p in summary.dicom_dir.rglob("*") if p.is_file())


def test_refuses_to_overwrite_a_folder_it_did_not_write_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "dicom").mkdir(parents=True)
    (foreign / "dicom" / "scan.dcm").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_demo_cohort(foreign, 1, 0, config=SMALL_CONFIG)
    assert (foreign / "dicom" / "scan.dcm").read_bytes() == b"precious"
    rewritten, fresh = tmp_path / "rewritten", tmp_path / "fresh"
    write_demo_cohort(rewritten, 1, 0, broken=True, config=SMALL_CONFIG)
    write_demo_cohort(rewritten, 1, 3, config=SMALL_CONFIG)
    write_demo_cohort(fresh, 1, 3, config=SMALL_CONFIG)
    assert _tree(rewritten) == _tree(fresh)  # no stale files from the earlier cohort
