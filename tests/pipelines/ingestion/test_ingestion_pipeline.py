"""The ingestion pipelines end to end with SequentialRunner on the project's own catalog entries (tmp paths)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner
from project_config import catalog_config, parameters

from generatect_kedro.dicom.writer import SeriesGeometry, StorageEncoding, write_ct_series
from generatect_kedro.pipelines.ingestion import create_ctrate_pipeline, create_pipeline
from generatect_kedro.utils.atomic import file_sha256
from generatect_kedro.utils.identifiers import pseudonym

SECRETS = ("PID-SECRET-1", "PID-SECRET-2", "DOE^JANE", "ROE^RICHARD", "DOE", "ROE")


def project_catalog(tmp_path: Path, params_override: dict | None = None) -> DataCatalog:
    """conf/base/catalog_ingestion.yml with every `data/…` path moved under tmp_path, plus the parameters."""
    catalog = DataCatalog.from_config(catalog_config("ingestion", tmp_path))
    catalog["params:ingestion"] = {**parameters("ingestion"), **(params_override or {})}
    return catalog


def hu_pattern(slices: int) -> np.ndarray:
    k, r, c = np.meshgrid(np.arange(slices), np.arange(6), np.arange(8), indexing="ij")
    return -1000.0 + 20.0 * k + 5.0 * r + c


def write_cohort(root: Path) -> int:
    """Two patients, two good series, a scout, a series with a gap, a junk file. Returns the file count."""
    a = {"PatientID": "PID-SECRET-1", "PatientName": "DOE^JANE", "AccessionNumber": "00077",
         "PatientAge": "058Y", "PatientSex": "F", "Manufacturer": "ACME"}
    b = {"PatientID": "PID-SECRET-2", "PatientName": "ROE^RICHARD", "AccessionNumber": "A-9",
         "PatientAge": "071Y", "PatientSex": "M", "Manufacturer": "OTHER"}
    rng = np.random.default_rng(0)
    names = lambda i: rng.bytes(8).hex()  # noqa: E731 - random names, order not by position
    write_ct_series(hu_pattern(12), root / "export1", SeriesGeometry((0.7, 0.7), 2.5, (-100, -80, -200)),
                    StorageEncoding(0.5, -1024.0), a, names)
    write_ct_series(hu_pattern(1), root / "export1", SeriesGeometry((1.0, 1.0), 1.0), tags=a, file_names=names)
    write_ct_series(hu_pattern(10), root / "export2", SeriesGeometry((0.6, 0.6), -3.0, (0, 0, 40), slice_thickness=3.0),
                    StorageEncoding(1.0, 0.0, unsigned=False, bits_stored=16), b, names)
    gap = write_ct_series(hu_pattern(10), root / "export2" / "gap", SeriesGeometry((0.6, 0.6), 3.0), tags=b,
                          file_names=names)
    gap[5].unlink()
    (root / "export2" / "Thumbs.db").write_bytes(b"\x00" * 64)
    return 12 + 1 + 10 + 9 + 1


def outputs_text(folder: Path) -> bytes:
    blob = b""
    for path in folder.rglob("*"):
        blob += str(path.relative_to(folder)).encode()
        if path.is_file():
            data = path.read_bytes()
            blob += gzip.decompress(data) if path.name.endswith(".gz") else data
    return blob


@pytest.fixture
def dicom_run(tmp_path):
    file_count = write_cohort(tmp_path / "data" / "01_raw" / "dicom")
    pd.DataFrame({"study_id": ["00077", "A-9", "B-unused"], "findings": ["f-a", "f-b", "f-c"],
                  "impression": ["cardiomegaly", "normal", "x"]}).to_csv(tmp_path / "data/01_raw/reports.csv", index=False)
    catalog = project_catalog(tmp_path, {"slice_count_range": [5, 500]})
    SequentialRunner().run(create_pipeline(), catalog)
    return tmp_path, file_count, catalog


def test_dicom_pipeline_outputs(dicom_run):
    tmp_path, file_count, _ = dicom_run
    out = tmp_path / "data" / "02_intermediate"
    manifest = pd.read_csv(out / "manifest.csv")
    quarantine = pd.read_csv(out / "quarantine.csv")
    metadata = pd.read_csv(out / "metadata.csv", dtype={"patient_age": str})
    reports = pd.read_csv(out / "reports.csv")

    assert len(manifest) == 2 and set(manifest["source"]) == {"dicom"}
    assert manifest["file_count"].sum() + quarantine["file_count"].sum() == file_count  # accounting
    assert sorted(quarantine["reason_code"]) == ["localizer", "missing_slice", "not_dicom"]
    assert set(quarantine.columns) == {"item", "level", "reason_code", "reason", "file_count", "stage"}

    assert sorted(p.name for p in (out / "volumes").iterdir()) == sorted(manifest["nifti_file"])
    by_study = manifest.set_index("study_key")
    first = by_study.loc[pseudonym("00077", "study")]
    assert (first.shape_i, first.shape_j, first.shape_k) == (8, 6, 12)
    assert (first.spacing_i, first.spacing_j, first.spacing_k) == pytest.approx((0.7, 0.7, 2.5))
    assert (first.rescale_slope, first.rescale_intercept) == (0.5, -1024.0)
    assert (first.hu_min, first.hu_max) == (-1000, -1000 + 20 * 11 + 5 * 5 + 7)
    assert first.sha256 == file_sha256(out / "volumes" / first.nifti_file)

    image = nib.load(out / "volumes" / first.nifti_file)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    data = np.asanyarray(image.dataobj)
    assert data.dtype == np.int16
    assert data[7 - 3, 5 - 2, 4] == -1000 + 20 * 4 + 5 * 2 + 3  # slice 4, row 2, column 3
    np.testing.assert_allclose(image.affine[:3, 3], (100 - 7 * 0.7, 80 - 5 * 0.7, -200), atol=1e-4)

    second = by_study.loc[pseudonym("A-9", "study")]
    data = np.asanyarray(nib.load(out / "volumes" / second.nifti_file).dataobj)
    assert data[7, 5, 9] == -1000  # head-first: the first written slice (k=0) is the top one

    assert set(reports["study_key"]) >= set(manifest["study_key"])  # accession pseudonyms match
    assert list(metadata.columns) == ["volume_id", "study_key", "patient_key", "patient_age", "patient_sex",
                                      "manufacturer", "rescale_slope", "rescale_intercept", "xy_spacing",
                                      "z_spacing", "slice_count"]
    assert sorted(metadata["patient_age"]) == ["058Y", "071Y"]
    assert set(metadata["patient_key"]) == {pseudonym("PID-SECRET-1", "pat"), pseudonym("PID-SECRET-2", "pat")}


def test_no_patient_identifier_in_any_output(dicom_run):
    tmp_path, _, _ = dicom_run
    blob = outputs_text(tmp_path / "data" / "02_intermediate")
    for secret in SECRETS:
        assert secret.encode() not in blob


def test_conversion_failure_after_planning_is_quarantined(dicom_run):
    tmp_path, _, catalog = dicom_run
    plan = catalog.load("dicom_series_plan")
    victim = plan.iloc[0]
    (tmp_path / "data" / "01_raw" / "dicom" / victim["files"][3]).unlink()  # vanishes after planning
    SequentialRunner().run(create_pipeline().from_nodes("convert_dicom_series"), catalog)
    out = tmp_path / "data" / "02_intermediate"
    quarantine = pd.read_csv(out / "quarantine.csv")
    failed = quarantine[quarantine["reason_code"] == "conversion_failed"]
    assert list(failed["item"]) == [victim["volume_id"]] and failed["file_count"].iloc[0] == victim["file_count"]
    assert len(pd.read_csv(out / "manifest.csv")) == 1
    assert "FileNotFoundError" in (out / "volumes" / f"{victim['volume_id']}.nii.gz.error.json").read_text()


def test_ctrate_pipeline(tmp_path):
    raw = tmp_path / "data" / "01_raw" / "ctrate"
    hu = hu_pattern(12).transpose(2, 1, 0)  # (i=column, j=row, k=slice)
    names = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_a_1.nii.gz"]
    for name, data in zip(names, [hu + 1024, hu, hu], strict=True):
        folder = raw / "volumes" / "_".join(name.split("_")[:2]) / "_".join(name.split("_")[:3])
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data.astype(np.int16), np.eye(4)), folder / name)
    pd.DataFrame([{"VolumeName": n, "Manufacturer": "SIEMENS", "RescaleSlope": 1, "RescaleIntercept": -1024,
                   "XYSpacing": "[0.75, 0.75]", "ZSpacing": 1.5, "PatientSex": "F", "PatientAge": "044Y"}
                  for n in names[:2]]).to_csv(raw / "metadata.csv", index=False)
    pd.DataFrame({"VolumeName": names, "Findings_EN": ["a", "a", "b"], "Impressions_EN": ["ia", "ia", "ib"]}).to_csv(
        raw / "reports.csv", index=False)
    catalog = project_catalog(tmp_path, {"slice_count_range": [5, 500]})
    SequentialRunner().run(create_ctrate_pipeline(), catalog)
    out = tmp_path / "data" / "02_intermediate"
    manifest = pd.read_csv(out / "manifest.csv")
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert len(manifest) == 2 and set(manifest["source"]) == {"ctrate"}
    assert list(quarantine["reason_code"]) == ["missing_metadata"]
    assert (manifest["hu_min"] == -1000).all() and (manifest["hu_max"] == -1000 + 20 * 11 + 5 * 5 + 7).all()
    assert list(manifest["rescale_applied"]) in ([True, False], [False, True])
    assert set(pd.read_csv(out / "reports.csv")["study_key"]) == {pseudonym("train_1_a", "study"),
                                                                   pseudonym("train_2_a", "study")}


def test_cohort_with_no_usable_series_still_writes_the_quarantine(tmp_path):
    raw = tmp_path / "data" / "01_raw" / "dicom"
    raw.mkdir(parents=True)
    (raw / "readme.txt").write_text("nothing to see")
    write_ct_series(hu_pattern(1), raw, SeriesGeometry((1.0, 1.0), 1.0))
    pd.DataFrame({"study_id": ["1"], "findings": ["f"], "impression": ["i"]}).to_csv(
        tmp_path / "data/01_raw/reports.csv", index=False)
    SequentialRunner().run(create_pipeline(), project_catalog(tmp_path))
    out = tmp_path / "data" / "02_intermediate"
    assert pd.read_csv(out / "manifest.csv").empty
    assert sorted(pd.read_csv(out / "quarantine.csv")["reason_code"]) == ["localizer", "not_dicom"]
