"""Run the data-quality pipeline with SequentialRunner on the project's own catalog entries (tmp paths)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from project_config import catalog_config, parameters

from generatect_kedro.pipelines.data_quality import create_pipeline
from generatect_kedro.quality.suites import DataQualityError
from generatect_kedro.reports.labeler import LABEL_COLUMNS



def upstream(n: int = 12):
    vols = [f"vol-{i:03d}" for i in range(n)]
    studies = [f"stu-{i:03d}" for i in range(n)]
    patients = [f"pat-{i // 2:03d}" for i in range(n)]
    impressions = ["Bilateral pleural effusion.", "Cardiomegaly.", "No pleural effusion. Consolidation in the left lung."] * (n // 3)
    metadata = pd.DataFrame({
        "volume_id": vols, "study_key": studies, "patient_key": patients,
        "patient_age": ["058Y", "58", "", "104Y"] * (n // 4), "patient_sex": ["M", "F", "O", ""] * (n // 4),
        "manufacturer": "SIEMENS", "rescale_slope": 1.0, "rescale_intercept": -1024.0,
        "xy_spacing": 0.7, "z_spacing": 1.5, "slice_count": 200,
    })
    reports = pd.DataFrame({"study_key": studies, "findings": ["Heart size is normal."] * n, "impression": impressions})
    manifest = pd.DataFrame({
        "volume_id": vols, "patient_key": patients, "study_key": studies, "source": "dicom",
        "shape_i": 512, "shape_j": 512, "shape_k": 200, "spacing_i": 0.7, "spacing_j": 0.7, "spacing_k": 1.5,
        "rescale_slope": 1.0, "rescale_intercept": -1024.0, "hu_p01": -1000.0, "hu_p50": -700.0, "hu_p99": 400.0,
        "hu_min": -1024.0, "hu_max": 2500.0, "manufacturer": "SIEMENS", "file_count": 200,
        "nifti_file": [f"{v}.nii.gz" for v in vols], "sha256": [hashlib.sha256(v.encode()).hexdigest() for v in vols],
    })
    return metadata, reports, manifest


@pytest.fixture
def params():
    return parameters("data_quality")


def run(tmp_path, metadata, reports, manifest, params):
    catalog = DataCatalog.from_config(catalog_config("data_quality", tmp_path))
    catalog["volume_metadata"] = MemoryDataset(metadata)
    catalog["reports"] = MemoryDataset(reports)
    catalog["volume_manifest"] = MemoryDataset(manifest)
    catalog["params:data_quality"] = MemoryDataset(params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_pipeline_builds_cohort_quarantine_and_docs(tmp_path, params):
    metadata, reports, manifest = upstream()
    metadata.loc[1, "patient_age"] = "ABC"  # → unparseable_age
    reports.loc[2, "impression"] = "  "  # → empty_impression (study stu-002 → vol-002)
    manifest.loc[3, "hu_p01"] = -2048.0  # → double rescale
    catalog = run(tmp_path, metadata, reports, manifest, params)

    quarantine = pd.read_csv(tmp_path / "data/03_primary/quality_quarantine.csv")
    assert list(quarantine.columns) == ["item", "level", "reason_code", "reason", "file_count", "stage"]
    reasons = set(zip(quarantine["item"], quarantine["reason_code"]))
    assert reasons == {
        ("vol-001", "unparseable_age"),
        ("stu-002", "empty_impression"),
        ("vol-003", "expectation_failed:expect_column_values_to_be_between:hu_p01"),
    }

    cohort = catalog.load("cohort")  # through the catalog's CSV load args
    assert list(cohort.columns) == ["volume_id", "patient_key", "study_key", "age", "sex", "impression", "findings",
                                    "prompt", *LABEL_COLUMNS]
    assert set(cohort["volume_id"]) == {f"vol-{i:03d}" for i in range(12)} - {"vol-001", "vol-002", "vol-003"}
    row = cohort.set_index("volume_id")
    assert row.loc["vol-000", "prompt"] == "58 years old male: Bilateral pleural effusion."
    assert row.loc["vol-004", "prompt"] == "58 years old male: Cardiomegaly."
    assert row.loc["vol-005", "prompt"] == "58 years old female: No pleural effusion. Consolidation in the left lung."
    assert row.loc["vol-007", "prompt"] == "104 years old: Cardiomegaly."  # sex "" omitted
    assert pd.isna(row.loc["vol-006", "age"]) and row.loc["vol-006", "prompt"] == "Bilateral pleural effusion."
    assert pd.isna(row.loc["vol-006", "sex"])  # "O" is not written into prompts
    assert row.loc["vol-000", "pleural_effusion"] == 1 and row.loc["vol-000", "cardiomegaly"] == 0
    assert row.loc["vol-004", "cardiomegaly"] == 1
    assert row.loc["vol-005", "pleural_effusion"] == 0 and row.loc["vol-005", "consolidation"] == 1

    report_dir = tmp_path / "data/08_reporting/data_quality"
    md = (report_dir / "data_quality.md").read_text()
    assert "| metadata | 12 | 1 |" in md and "| manifest | 12 | 1 |" in md
    assert (report_dir / "data_quality.html").read_text().startswith("<!DOCTYPE html>")
    assert catalog.load("quality_summary")["passed"] is True
    metrics = catalog.load("quality_metrics")
    assert metrics["metadata.rows_failed"]["value"] == 1.0 and metrics["reports.success"]["value"] == 0.0


def test_pipeline_stops_over_threshold_after_writing_docs(tmp_path, params):
    metadata, reports, manifest = upstream()
    manifest["hu_p01"] = -2048.0  # every volume rescaled twice
    with pytest.raises(DataQualityError, match="manifest"):
        run(tmp_path, metadata, reports, manifest, params)
    md = (tmp_path / "data/08_reporting/data_quality/data_quality.md").read_text()
    assert "STOP" in md
    assert not (tmp_path / "data/03_primary/cohort.csv").exists()


def test_missing_reports_are_quarantined_as_missing_report(tmp_path, params):
    metadata, reports, manifest = upstream()
    catalog = run(tmp_path, metadata, reports[reports["study_key"] != "stu-005"], manifest, params)
    quarantine = catalog.load("quality_quarantine")
    assert quarantine[["item", "reason_code", "level"]].values.tolist() == [["vol-005", "missing_report", "volume"]]
    assert quarantine["file_count"].tolist() == [200]
    assert "vol-005" not in set(catalog.load("cohort")["volume_id"])
