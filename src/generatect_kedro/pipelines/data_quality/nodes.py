"""Data-quality nodes: validate the three upstream tables, render docs, quarantine and gate, build the cohort.

Validation nodes never raise on bad data: they return results so that the docs are written first.
`gate_quality` then turns failures into quarantine rows and stops the run (`DataQualityError`) when a
suite exceeds its `max_failed_fraction` or fails structurally (a required column missing, an empty table).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from generatect_kedro.quality import docs, suites
from generatect_kedro.reports.labeler import LABEL_COLUMNS, label_reports
from generatect_kedro.reports.prompts import build_prompt, parse_age, parse_sex

logger = logging.getLogger(__name__)

COHORT_COLUMNS = [
    "volume_id", "patient_key", "study_key", "age", "sex", "impression", "findings", "prompt", *LABEL_COLUMNS,
]


def _suite(name: str, frame: pd.DataFrame, expectations: list, params: Mapping[str, Any], key: str, level: str) -> dict:
    return suites.run_suite(
        name,
        frame,
        expectations,
        key=key,
        required_columns=list(params.get("required_columns", [])),
        max_failed_fraction=float(params.get("max_failed_fraction", 0.0)),
        level=level,
    )


def validate_metadata(volume_metadata: pd.DataFrame, params: Mapping[str, Any]) -> dict:
    """Metadata suite: age parsable and in range, sex code known, slope > 0, plausible spacing."""
    p = params["metadata"]
    key = p.get("key", "volume_id")
    frame = suites.prepare_metadata(volume_metadata, key)
    return _suite("metadata", frame, suites.metadata_expectations(p), p, key, "volume")


def validate_reports(reports: pd.DataFrame, params: Mapping[str, Any]) -> dict:
    """Report suite: one row per study, a non-empty impression (the prompt's body)."""
    p = params["reports"]
    key = p.get("key", "study_key")
    frame = suites.prepare_reports(reports, key)
    return _suite("reports", frame, suites.reports_expectations(p), p, key, "study")


def validate_manifest(volume_manifest: pd.DataFrame, params: Mapping[str, Any]) -> dict:
    """Manifest suite: slice count, spacing, air near -1000 HU and no double rescale (HU percentiles)."""
    p = params["manifest"]
    key = p.get("key", "volume_id")
    frame = suites.prepare_manifest(volume_manifest, key)
    return _suite("manifest", frame, suites.manifest_expectations(p), p, key, "volume")


def cross_check_tables(
    volume_metadata: pd.DataFrame, reports: pd.DataFrame, volume_manifest: pd.DataFrame, params: Mapping[str, Any]
) -> dict:
    """Volumes that cannot enter the cohort: no report, no metadata row, or no stored volume."""
    p = params.get("cross_table", {})
    return suites.cross_check(volume_metadata, reports, volume_manifest, float(p.get("max_failed_fraction", 0.0)))


def render_quality_docs(
    metadata_validation: dict, reports_validation: dict, manifest_validation: dict, cross_table_validation: dict
) -> tuple[str, str, dict, dict]:
    """Markdown and HTML docs, a JSON summary and MLflow metrics, written before the gate can stop the run."""
    results = [metadata_validation, reports_validation, manifest_validation, cross_table_validation]
    return (
        docs.render_markdown(results),
        docs.render_html(results),
        docs.summary(results),
        docs.metrics(results),
    )


def gate_quality(
    metadata_validation: dict,
    reports_validation: dict,
    manifest_validation: dict,
    cross_table_validation: dict,
    volume_manifest: pd.DataFrame,
    quality_summary: dict,  # noqa: ARG001 - only orders this node after the docs are saved
) -> pd.DataFrame:
    """The quarantine table (item, level, reason_code, reason, file_count, stage); raises over thresholds."""
    results = [metadata_validation, reports_validation, manifest_validation, cross_table_validation]
    frames = [suites.quarantine_rows(r) for r in results]
    quarantine = pd.concat([f for f in frames if not f.empty] or [frames[0]], ignore_index=True)
    quarantine = quarantine.drop_duplicates(["item", "level", "reason_code"]).reset_index(drop=True)
    if {"volume_id", "file_count"} <= set(volume_manifest.columns) and not quarantine.empty:
        counts = volume_manifest.dropna(subset=["volume_id"]).drop_duplicates("volume_id")
        counts = pd.Series(pd.to_numeric(counts["file_count"], errors="coerce").to_numpy(), index=counts["volume_id"].astype(str))
        is_volume = quarantine["level"] == "volume"
        quarantine.loc[is_volume, "file_count"] = quarantine.loc[is_volume, "item"].map(counts)
    quarantine["file_count"] = pd.to_numeric(quarantine["file_count"], errors="coerce").astype("Int64")
    logger.info("quarantined %d items (%d reasons)", quarantine["item"].nunique(), len(quarantine))
    suites.enforce_thresholds(results)
    return quarantine


def _excluded_volumes(metadata: pd.DataFrame, quarantine: pd.DataFrame) -> set[str]:
    volumes = set(quarantine.loc[quarantine["level"] == "volume", "item"].astype(str))
    studies = set(quarantine.loc[quarantine["level"] == "study", "item"].astype(str))
    in_bad_study = metadata["study_key"].astype(str).isin(studies)
    return volumes | set(metadata.loc[in_bad_study, "volume_id"].astype(str))


def build_cohort(
    volume_metadata: pd.DataFrame,
    reports: pd.DataFrame,
    volume_manifest: pd.DataFrame,
    quality_quarantine: pd.DataFrame,
    params: Mapping[str, Any],
) -> pd.DataFrame:
    """volume ↔ patient ↔ study ↔ report ↔ prompt ↔ labels for every volume that passed data quality."""
    p = params.get("cohort", {})
    meta = volume_metadata.copy()
    meta["volume_id"] = meta["volume_id"].astype(str)
    excluded = _excluded_volumes(meta, quality_quarantine)
    stored = set(volume_manifest["volume_id"].dropna().astype(str))
    meta = meta[~meta["volume_id"].isin(excluded) & meta["volume_id"].isin(stored)]
    text = reports.drop_duplicates("study_key", keep=False)[["study_key", "findings", "impression"]].copy()
    text["study_key"] = text["study_key"].astype(str)
    meta = meta.assign(study_key=meta["study_key"].astype(str))
    cohort = meta.merge(text, on="study_key", how="inner", validate="many_to_one")
    cohort["age"] = pd.array([parse_age(v) for v in cohort["patient_age"].astype("object")], dtype="Int64")
    cohort["sex"] = pd.Series([parse_sex(v) for v in cohort["patient_sex"].astype("object")], index=cohort.index, dtype="object")
    for column in ("findings", "impression"):
        cohort[column] = cohort[column].astype("object").where(cohort[column].notna(), "").astype(str).str.strip()
    cohort["prompt"] = [
        build_prompt(None if pd.isna(a) else int(a), s, i) for a, s, i in zip(cohort["age"], cohort["sex"], cohort["impression"])
    ]
    labels = label_reports(cohort, list(p.get("text_columns", ["findings", "impression"])))
    cohort = pd.concat([cohort, labels], axis=1)
    cohort = cohort[COHORT_COLUMNS].sort_values("volume_id").reset_index(drop=True)
    logger.info(
        "cohort: %d volumes, %d patients (%d volumes excluded by quarantine)",
        len(cohort), cohort["patient_key"].nunique(), len(excluded),
    )
    if cohort.empty:
        raise suites.DataQualityError("the cohort is empty after quarantine; see the data-quality docs")
    return cohort
