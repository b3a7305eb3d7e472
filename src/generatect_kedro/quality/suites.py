"""Great Expectations suites for the metadata, report and manifest tables, built from parameters.

Everything runs in an ephemeral GX context (nothing written to disk, no progress bars): the project keeps
its own results format, a plain dict per suite that is easy to save as JSON, render and log to MLflow:

    {"suite", "key", "rows_checked", "rows_failed", "failed_fraction", "max_failed_fraction",
     "table_failed", "success", "within_threshold",
     "expectations": [{"expectation_type", "column", "success", "unexpected_count", "unexpected_keys",
                       "reason_code", "level"}]}

`unexpected_keys` are the row keys (volume_id or study_key, already pseudonymous); offending values are
never copied out. Columns are validated after light, explicit derivations (parsed age, normalised sex,
numeric spacing) so that an unparseable age is reported as `unparseable_age`, not as a type error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from generatect_kedro.reports.prompts import AGE_UNPARSEABLE, age_status

logger = logging.getLogger(__name__)

ROW_KEY = "row_key"
TABLE_LEVEL = "table"
_NUMBER_RE = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def first_number(value: Any) -> float:
    """A float from numbers or strings such as "[0.7, 0.7]" (CT-RATE's XYSpacing); NaN when none."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    match = _NUMBER_RE.search(str(value))
    return float(match.group(0)) if match else np.nan


def _numeric(series: pd.Series) -> pd.Series:
    return series.map(first_number).astype("float64")


def _row_keys(df: pd.DataFrame, key: str) -> pd.Series:
    if key in df.columns:
        keys = df[key].astype("object")
        missing = keys.isna() | (keys.astype(str).str.strip() == "")
        return keys.astype(str).where(~missing, [f"row-{i}" for i in range(len(df))])
    return pd.Series([f"row-{i}" for i in range(len(df))], index=df.index, dtype="object")


# --- frames as validated -------------------------------------------------------------------------------


def prepare_metadata(df: pd.DataFrame, key: str = "volume_id") -> pd.DataFrame:
    """Metadata with `patient_age` in whole years, `age_status`, normalised sex and numeric geometry."""
    out = df.copy()
    if "patient_age" in out.columns:
        parsed = [age_status(v) for v in out["patient_age"].astype("object")]
        out["patient_age"] = pd.Series([np.nan if a is None else float(a) for a, _ in parsed], index=out.index)
        out["age_status"] = pd.Series([s for _, s in parsed], index=out.index, dtype="object")
    if "patient_sex" in out.columns:
        sex = out["patient_sex"].astype("object").map(lambda v: None if pd.isna(v) else str(v).strip().upper())
        out["patient_sex"] = sex.where(sex.notna() & (sex != ""), None).astype("object")
    for column in ("rescale_slope", "rescale_intercept", "xy_spacing", "z_spacing", "slice_count"):
        if column in out.columns:
            out[column] = _numeric(out[column])
    out[ROW_KEY] = _row_keys(df, key)
    return out


def prepare_reports(df: pd.DataFrame, key: str = "study_key") -> pd.DataFrame:
    out = df.copy()
    for column in ("findings", "impression"):
        if column in out.columns:
            out[column] = out[column].astype("object")
    out[ROW_KEY] = _row_keys(df, key)
    return out


def prepare_manifest(df: pd.DataFrame, key: str = "volume_id") -> pd.DataFrame:
    out = df.copy()
    numeric = [c for c in out.columns if c.startswith(("shape_", "spacing_", "hu_", "rescale_")) or c == "file_count"]
    for column in numeric:
        out[column] = _numeric(out[column])
    if "sha256" in out.columns:
        out["sha256"] = out["sha256"].astype("object")
    out[ROW_KEY] = _row_keys(df, key)
    return out


# --- expectations from parameters ----------------------------------------------------------------------


def _range(bounds: Sequence[float] | Mapping[str, float] | None) -> tuple[float | None, float | None]:
    if bounds is None:
        return None, None
    if isinstance(bounds, Mapping):
        return bounds.get("min"), bounds.get("max")
    low, high = bounds
    return low, high


def _between(gxe, column: str, bounds, **extra) -> Any:
    low, high = _range(bounds)
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, **extra)


def _with_reason(expectation, reason_code: str | None = None):
    if reason_code:
        expectation.meta = {**(expectation.meta or {}), "reason_code": reason_code}
    return expectation


def metadata_expectations(params: Mapping[str, Any]) -> list:
    import great_expectations.expectations as gxe

    key = params.get("key", "volume_id")
    exps = [gxe.ExpectColumnValuesToNotBeNull(column=key), gxe.ExpectColumnValuesToBeUnique(column=key)]
    exps.append(_with_reason(gxe.ExpectColumnValuesToBeInSet(column="age_status", value_set=["ok", "missing"]), AGE_UNPARSEABLE))
    exps.append(_between(gxe, "patient_age", params.get("age_years", [0, 120])))
    if params.get("require_age", False):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column="patient_age"))
    exps.append(gxe.ExpectColumnValuesToBeInSet(column="patient_sex", value_set=list(params.get("sex_values", ["M", "F", "O"]))))
    if params.get("require_sex", False):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column="patient_sex"))
    for column in ("study_key", "patient_key", "rescale_slope", "rescale_intercept", "xy_spacing", "z_spacing"):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    exps.append(gxe.ExpectColumnValuesToBeBetween(column="rescale_slope", min_value=0, strict_min=True))
    exps.append(_between(gxe, "xy_spacing", params.get("xy_spacing_mm", [0.2, 2.0])))
    exps.append(_between(gxe, "z_spacing", params.get("z_spacing_mm", [0.3, 10.0])))
    if params.get("slice_count") is not None:
        exps.append(_between(gxe, "slice_count", params["slice_count"]))
    return exps


def reports_expectations(params: Mapping[str, Any]) -> list:
    import great_expectations.expectations as gxe

    key = params.get("key", "study_key")
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToBeUnique(column=key),
        _with_reason(gxe.ExpectColumnValuesToNotBeNull(column="impression"), "empty_impression"),
        _with_reason(gxe.ExpectColumnValuesToMatchRegex(column="impression", regex=r"\S"), "empty_impression"),
    ]


def manifest_expectations(params: Mapping[str, Any]) -> list:
    import great_expectations.expectations as gxe

    key = params.get("key", "volume_id")
    exps = [gxe.ExpectColumnValuesToNotBeNull(column=key), gxe.ExpectColumnValuesToBeUnique(column=key)]
    for column in ("shape_i", "shape_j", "shape_k", "spacing_i", "spacing_j", "spacing_k", "hu_p01", "hu_max", "sha256"):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    exps.append(gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-fA-F]{64}$"))
    exps.append(_between(gxe, "shape_k", params.get("slice_count", [100, 600])))
    if params.get("in_plane_size") is not None:
        exps.append(_between(gxe, "shape_i", params["in_plane_size"]))
        exps.append(_between(gxe, "shape_j", params["in_plane_size"]))
    for column in ("spacing_i", "spacing_j"):
        exps.append(_between(gxe, column, params.get("xy_spacing_mm", [0.2, 2.0])))
    exps.append(_between(gxe, "spacing_k", params.get("z_spacing_mm", [0.3, 10.0])))
    exps.append(gxe.ExpectColumnValuesToBeBetween(column="rescale_slope", min_value=0, strict_min=True))
    exps.append(_between(gxe, "hu_p01", params.get("hu_p01", [-1100, -900])))
    if params.get("hu_p99") is not None:
        exps.append(_between(gxe, "hu_p99", params["hu_p99"]))
    exps.append(_between(gxe, "hu_max", {"max": params.get("hu_max_max", 4000)}))
    return exps


# --- running a suite -----------------------------------------------------------------------------------


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _column(config: Mapping[str, Any]) -> str | None:
    return config.get("kwargs", {}).get("column")


def run_suite(
    name: str,
    frame: pd.DataFrame,
    expectations: list,
    *,
    key: str,
    required_columns: Sequence[str],
    max_failed_fraction: float,
    level: str,
) -> dict[str, Any]:
    """Validate `frame` (already prepared) and return the project's results dict (see module docstring)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    present = set(frame.columns)
    table_exps = [gxe.ExpectColumnToExist(column=c) for c in required_columns]
    table_exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    # Column expectations on absent columns would only raise; the ExpectColumnToExist failure says it all.
    column_exps = [e for e in expectations if getattr(e, "column", None) in present]
    context = _context()
    batch = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=table_exps + column_exps))
    validation = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [ROW_KEY],
            "partial_unexpected_count": 0,
            "return_unexpected_index_query": False,
        },
    )
    entries = []
    for result in validation.results:
        data = result.to_json_dict()
        config, payload = data["expectation_config"], data.get("result") or {}
        expectation_type, column = config["type"], _column(config)
        is_table = expectation_type in ("expect_column_to_exist", "expect_table_row_count_to_be_between")
        keys = sorted({str(item.get(ROW_KEY)) for item in payload.get("unexpected_index_list") or [] if isinstance(item, Mapping)})
        default_reason = f"expectation_failed:{expectation_type}" + (f":{column}" if column else "")
        entries.append(
            {
                "expectation_type": expectation_type,
                "column": column,
                "success": bool(data["success"]),
                "element_count": payload.get("element_count"),
                "unexpected_count": int(payload.get("unexpected_count") or (0 if data["success"] else len(keys))),
                "unexpected_keys": keys,
                "reason_code": (config.get("meta") or {}).get("reason_code", default_reason),
                "level": TABLE_LEVEL if is_table else level,
                "raised_exception": bool((data.get("exception_info") or {}).get("raised_exception")),
            }
        )
    order = {"expect_column_to_exist": 0, "expect_table_row_count_to_be_between": 1}
    entries.sort(key=lambda e: (order.get(e["expectation_type"], 2), str(e["column"]), e["expectation_type"]))
    return summarise(name, key, len(frame), entries, max_failed_fraction)


def summarise(name: str, key: str, rows: int, entries: list[dict], max_failed_fraction: float) -> dict[str, Any]:
    """Suite-level numbers from expectation entries (shared with the non-GX cross-table checks)."""
    failed_keys = {k for e in entries if e["level"] != TABLE_LEVEL for k in e["unexpected_keys"]}
    table_failed = any(not e["success"] and (e["level"] == TABLE_LEVEL or e["raised_exception"]) for e in entries)
    fraction = 1.0 if table_failed else (len(failed_keys) / rows if rows else 0.0)
    result = {
        "suite": name,
        "key": key,
        "rows_checked": int(rows),
        "rows_failed": int(len(failed_keys)),
        "failed_fraction": float(fraction),
        "max_failed_fraction": float(max_failed_fraction),
        "table_failed": bool(table_failed),
        "success": all(e["success"] for e in entries),
        "within_threshold": (not table_failed) and fraction <= max_failed_fraction,
        "expectations": entries,
    }
    logger.info(
        "data quality %s: %d rows, %d failed (%.1f%%), %d/%d expectations passed",
        name, rows, len(failed_keys), 100 * fraction, sum(e["success"] for e in entries), len(entries),
    )
    return result


# --- checks across tables (plain pandas, same results format) -------------------------------------------


def _entry(check: str, keys: set[str], level: str, rows: int) -> dict[str, Any]:
    return {
        "expectation_type": check,
        "column": None,
        "success": not keys,
        "element_count": rows,
        "unexpected_count": len(keys),
        "unexpected_keys": sorted(keys),
        "reason_code": check,
        "level": level,
        "raised_exception": False,
    }


def cross_check(
    metadata: pd.DataFrame, reports: pd.DataFrame, manifest: pd.DataFrame, max_failed_fraction: float
) -> dict[str, Any]:
    """Volumes without a report (`missing_report`), without metadata or without a stored volume."""
    def keys(df: pd.DataFrame, column: str) -> set[str]:
        return set(df[column].dropna().astype(str)) if column in df.columns else set()

    volumes = keys(metadata, "volume_id") | keys(manifest, "volume_id")
    study_of = {}
    for frame in (manifest, metadata):  # metadata wins where both say
        if {"volume_id", "study_key"} <= set(frame.columns):
            pairs = frame[["volume_id", "study_key"]].dropna()
            study_of.update(zip(pairs["volume_id"].astype(str), pairs["study_key"].astype(str)))
    report_studies = keys(reports, "study_key")
    entries = [
        _entry("missing_report", {v for v in volumes if study_of.get(v) not in report_studies}, "volume", len(volumes)),
        _entry("missing_metadata", keys(manifest, "volume_id") - keys(metadata, "volume_id"), "volume", len(volumes)),
        _entry("missing_volume", keys(metadata, "volume_id") - keys(manifest, "volume_id"), "volume", len(volumes)),
    ]
    return summarise("cross_table", "volume_id", len(volumes), entries, max_failed_fraction)


# --- quarantine and the stop rule ------------------------------------------------------------------------

QUARANTINE_COLUMNS = ["item", "level", "reason_code", "reason", "file_count", "stage"]


class DataQualityError(RuntimeError):
    """Raised when a suite fails structurally or more rows fail than its `max_failed_fraction` allows."""


def _reason_text(entry: Mapping[str, Any], suite: str) -> str:
    what = entry["expectation_type"].replace("_", " ")
    column = f" on column {entry['column']}" if entry["column"] else ""
    return f"{suite}: {what}{column} failed"


def quarantine_rows(results: Mapping[str, Any], stage: str = "data_quality") -> pd.DataFrame:
    """One row per (item, failed expectation); table-level failures are keyed by the suite name."""
    rows = []
    for entry in results["expectations"]:
        if entry["success"]:
            continue
        items = entry["unexpected_keys"] or ([results["suite"]] if entry["level"] == TABLE_LEVEL else [])
        for item in items:
            rows.append(
                {
                    "item": item,
                    "level": entry["level"],
                    "reason_code": entry["reason_code"],
                    "reason": _reason_text(entry, results["suite"]),
                    "file_count": pd.NA,
                    "stage": stage,
                }
            )
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def enforce_thresholds(all_results: Sequence[Mapping[str, Any]]) -> None:
    """Raise `DataQualityError` naming every suite over its threshold, its failed checks and fractions."""
    problems = []
    for results in all_results:
        if results["within_threshold"]:
            continue
        failed = ", ".join(
            f"{e['expectation_type']}({e['column'] or '-'}): {e['unexpected_count']} unexpected"
            for e in results["expectations"]
            if not e["success"]
        )
        cause = "table-level expectation failed" if results["table_failed"] else "too many failed rows"
        problems.append(
            f"suite '{results['suite']}' ({cause}): failed fraction {results['failed_fraction']:.3f} > "
            f"max_failed_fraction {results['max_failed_fraction']:.3f} "
            f"({results['rows_failed']}/{results['rows_checked']} rows); failed: {failed}"
        )
    if problems:
        raise DataQualityError("data quality gate failed:\n  " + "\n  ".join(problems))
