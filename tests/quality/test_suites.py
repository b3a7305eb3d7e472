import json

import numpy as np
import pandas as pd
import pytest

from generatect_kedro.pipelines.data_quality.nodes import (
    cross_check_tables,
    gate_quality,
    validate_manifest,
    validate_metadata,
    validate_reports,
)
from generatect_kedro.quality.suites import DataQualityError, enforce_thresholds, first_number, quarantine_rows


def failures(results):
    """{(item, reason_code)} of a results dict."""
    return {(k, e["reason_code"]) for e in results["expectations"] if not e["success"] for k in e["unexpected_keys"]}


def test_clean_tables_pass_every_suite(tables, dq_params):
    metadata, reports, manifest = tables
    results = [
        validate_metadata(metadata, dq_params),
        validate_reports(reports, dq_params),
        validate_manifest(manifest, dq_params),
        cross_check_tables(metadata, reports, manifest, dq_params),
    ]
    for r in results:
        assert r["success"], [e for e in r["expectations"] if not e["success"]]
        assert r["rows_checked"] == 10 and r["rows_failed"] == 0 and r["within_threshold"]
    assert len(results[0]["expectations"]) > 15  # the suite really checks things
    quarantine = gate_quality(*results, manifest, {})
    assert quarantine.empty
    assert list(quarantine.columns) == ["item", "level", "reason_code", "reason", "file_count", "stage"]


def test_metadata_failures_name_row_and_expectation(tables, dq_params):
    metadata, _, _ = tables
    metadata["xy_spacing"] = metadata["xy_spacing"].astype(object)
    metadata.loc[1, "patient_age"] = "ABC"
    metadata.loc[2, "patient_age"] = "130Y"
    metadata.loc[3, "patient_sex"] = "X"
    metadata.loc[4, "rescale_slope"] = 0.0
    metadata.loc[5, "xy_spacing"] = "[5.0, 5.0]"
    metadata.loc[6, "patient_age"] = ""  # missing is allowed: the prompt omits it
    metadata.loc[7, "patient_age"] = "104Y"
    metadata.loc[8, "xy_spacing"] = "[0.68, 0.68]"  # CT-RATE's string form parses
    metadata.loc[9, "patient_sex"] = None
    results = validate_metadata(metadata, {**dq_params, "metadata": {**dq_params["metadata"], "max_failed_fraction": 1.0}})
    assert failures(results) == {
        ("vol-001", "unparseable_age"),
        ("vol-002", "expectation_failed:expect_column_values_to_be_between:patient_age"),
        ("vol-003", "expectation_failed:expect_column_values_to_be_in_set:patient_sex"),
        ("vol-004", "expectation_failed:expect_column_values_to_be_between:rescale_slope"),
        ("vol-005", "expectation_failed:expect_column_values_to_be_between:xy_spacing"),
    }
    assert results["rows_failed"] == 5 and results["failed_fraction"] == pytest.approx(0.5)
    assert results["within_threshold"]
    # offending values never leave the validation
    assert "ABC" not in json.dumps(results) and "130" not in json.dumps(results)


def test_require_age_makes_missing_age_a_failure(tables, dq_params):
    metadata, _, _ = tables
    metadata.loc[0, "patient_age"] = None
    params = {**dq_params, "metadata": {**dq_params["metadata"], "require_age": True}}
    assert ("vol-000", "expectation_failed:expect_column_values_to_not_be_null:patient_age") in failures(
        validate_metadata(metadata, params)
    )


def test_report_failures(tables, dq_params):
    _, reports, _ = tables
    reports.loc[0, "impression"] = ""
    reports.loc[1, "impression"] = None
    reports.loc[2, "impression"] = "   "
    reports.loc[4, "study_key"] = "stu-003"
    results = validate_reports(reports, dq_params)
    assert failures(results) == {
        ("stu-000", "empty_impression"),
        ("stu-001", "empty_impression"),
        ("stu-002", "empty_impression"),
        ("stu-003", "expectation_failed:expect_column_values_to_be_unique:study_key"),
    }
    assert not results["within_threshold"]  # 4/10 > 0.2
    rows = quarantine_rows(results)
    assert set(rows["level"]) == {"study"}


def test_manifest_catches_double_rescale_and_geometry(tables, dq_params):
    _, _, manifest = tables
    manifest.loc[0, "hu_p01"] = -2048.0  # intercept applied twice
    manifest.loc[1, "hu_max"] = 7000.0
    manifest.loc[2, "shape_k"] = 50
    manifest.loc[3, "spacing_k"] = 25.0
    manifest.loc[4, "sha256"] = None
    manifest.loc[5, "hu_p01"] = 24.0  # intercept never applied: air is near 0
    manifest.loc[6, ["hu_p01", "hu_p50", "hu_p99"]] = [-1000.0, -1000.0, -624.0]  # doubled intercept, clipped
    results = validate_manifest(manifest, {**dq_params, "manifest": {**dq_params["manifest"], "max_failed_fraction": 1.0}})
    found = failures(results)
    assert ("vol-000", "expectation_failed:expect_column_values_to_be_between:hu_p01") in found
    assert ("vol-001", "expectation_failed:expect_column_values_to_be_between:hu_max") in found
    assert ("vol-002", "expectation_failed:expect_column_values_to_be_between:shape_k") in found
    assert ("vol-003", "expectation_failed:expect_column_values_to_be_between:spacing_k") in found
    assert ("vol-004", "expectation_failed:expect_column_values_to_not_be_null:sha256") in found
    assert ("vol-005", "expectation_failed:expect_column_values_to_be_between:hu_p01") in found
    assert ("vol-006", "expectation_failed:expect_column_values_to_be_between:hu_p99") in found
    assert {k for k, _ in found} == {f"vol-00{i}" for i in range(7)}


def test_missing_required_column_stops_the_run(tables, dq_params):
    metadata, _, _ = tables
    results = validate_metadata(metadata.drop(columns=["patient_sex"]), dq_params)
    assert results["table_failed"] and not results["within_threshold"]
    missing = [e for e in results["expectations"] if not e["success"]]
    assert [(e["expectation_type"], e["column"]) for e in missing] == [("expect_column_to_exist", "patient_sex")]
    with pytest.raises(DataQualityError, match="suite 'metadata'.*table-level.*patient_sex"):
        enforce_thresholds([results])
    rows = quarantine_rows(results)
    assert rows.iloc[0]["item"] == "metadata" and rows.iloc[0]["level"] == "table"


def test_threshold_decides_when_to_stop(tables, dq_params):
    metadata, reports, manifest = tables
    metadata.loc[[0, 1, 2], "patient_age"] = "ABC"
    strict = validate_metadata(metadata, dq_params)  # 3/10 = 0.3 > 0.2
    others = [validate_reports(reports, dq_params), validate_manifest(manifest, dq_params),
              cross_check_tables(metadata, reports, manifest, dq_params)]
    with pytest.raises(DataQualityError) as error:
        gate_quality(strict, *others, manifest, {})
    message = str(error.value)
    assert "metadata" in message and "0.300" in message and "0.200" in message and "age_status" in message
    assert "reports" not in message
    lenient = validate_metadata(metadata, {**dq_params, "metadata": {**dq_params["metadata"], "max_failed_fraction": 0.5}})
    quarantine = gate_quality(lenient, *others, manifest, {})
    assert set(quarantine["item"]) == {"vol-000", "vol-001", "vol-002"}
    assert set(quarantine["reason_code"]) == {"unparseable_age"}
    assert quarantine["file_count"].tolist() == [200, 200, 200]  # from the manifest
    assert set(quarantine["stage"]) == {"data_quality"}


def test_cross_table_missing_report_metadata_volume(tables, dq_params):
    metadata, reports, manifest = tables
    reports = reports[reports["study_key"] != "stu-002"]
    manifest = manifest[manifest["volume_id"] != "vol-003"]
    metadata = metadata[metadata["volume_id"] != "vol-004"]
    results = cross_check_tables(metadata, reports, manifest, dq_params)
    assert failures(results) == {
        ("vol-002", "missing_report"),
        ("vol-003", "missing_volume"),
        ("vol-004", "missing_metadata"),
    }
    assert results["rows_checked"] == 10


@pytest.mark.parametrize("value, expected", [("[0.7, 0.8]", 0.7), (0.5, 0.5), ("1.25", 1.25), ("abc", np.nan), (None, np.nan)])
def test_first_number(value, expected):
    got = first_number(value)
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


def test_garbage_numbers_fail_not_null(tables, dq_params):
    metadata, _, _ = tables
    metadata["z_spacing"] = metadata["z_spacing"].astype(object)
    metadata.loc[0, "z_spacing"] = "n/a"
    found = failures(validate_metadata(metadata, dq_params))
    assert found == {("vol-000", "expectation_failed:expect_column_values_to_not_be_null:z_spacing")}


def test_results_are_json_serialisable(tables, dq_params):
    metadata, _, _ = tables
    json.dumps(validate_metadata(metadata, dq_params))
    assert isinstance(pd.DataFrame(quarantine_rows(validate_metadata(metadata, dq_params))), pd.DataFrame)
