"""Ingestion nodes: DICOM exports (or the CT-RATE layout) → HU NIfTI volumes, manifest, metadata, reports, quarantine.

Nodes are functions of data and parameters (`params:ingestion`). Patient identifiers leave these nodes only as
pseudonyms; nothing here logs header values.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from generatect_kedro.dicom.ctrate import ctrate_reports, ctrate_to_volume, plan_ctrate
from generatect_kedro.dicom.series import QUARANTINE_COLUMNS, plan_series, quarantine_frame, quarantine_row
from generatect_kedro.io.dicom_directory import DicomIndex
from generatect_kedro.io.nifti_volume import ERROR_SUFFIX, ConversionFailure
from generatect_kedro.utils.identifiers import pseudonym
from generatect_kedro.volume import HUVolume

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "volume_id", "patient_key", "study_key", "source", "shape_i", "shape_j", "shape_k", "spacing_i", "spacing_j",
    "spacing_k", "rescale_slope", "rescale_intercept", "rescale_slope_min", "rescale_slope_max",
    "rescale_intercept_min", "rescale_intercept_max", "rescale_applied", "hu_p01", "hu_p50", "hu_p99", "hu_min",
    "hu_max", "manufacturer", "file_count", "nifti_file", "sha256",
]
METADATA_COLUMNS = [
    "volume_id", "study_key", "patient_key", "patient_age", "patient_sex", "manufacturer", "rescale_slope",
    "rescale_intercept", "xy_spacing", "z_spacing", "slice_count",
]
REPORT_COLUMNS = ["study_key", "findings", "impression"]
VOLUME_SUFFIX = ".nii.gz"


def _hu_window(params: Mapping[str, Any]) -> tuple[float, float]:
    low, high = (float(v) for v in params.get("hu_window", (-1000, 1000)))
    return low, high


def _log_quarantine_summary(quarantine: pd.DataFrame, what: str) -> None:
    counts = quarantine.groupby("reason_code")["file_count"].sum().to_dict() if len(quarantine) else {}
    if counts:
        logger.warning("%s quarantined files by reason: %s", what, dict(sorted(counts.items())))


# --- DICOM ---------------------------------------------------------------------------------------------------


def plan_dicom_series(raw_dicom: DicomIndex, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decide which files form which accepted axial CT series; everything else gets a quarantine reason."""
    plan, quarantine = plan_series(raw_dicom.headers, params, slice_content=raw_dicom.read_slice_hu)
    _log_quarantine_summary(quarantine, "DICOM")
    return plan, quarantine


def _convert_dicom_one(raw_dicom: DicomIndex, files: list[str], window: tuple[float, float], meta: dict) -> Any:
    try:
        return raw_dicom.read_volume(files, window, meta)
    except Exception as exc:  # noqa: BLE001 - one bad series must not abort a cohort; it is reported instead
        text = f"{type(exc).__name__}: {exc}".replace(str(raw_dicom.root), "<dicom root>")
        logger.error("conversion of %s failed: %s", meta["volume_id"], text)
        return ConversionFailure(meta["volume_id"], text)


def convert_dicom_series(
    raw_dicom: DicomIndex, dicom_series_plan: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """Lazy `{volume_id: () -> HUVolume}`: the partitioned dataset converts and writes one series at a time."""
    window = _hu_window(params)
    converters = {}
    for row in dicom_series_plan.to_dict("records"):
        meta = {"volume_id": row["volume_id"], "source": "dicom", "manufacturer": row["manufacturer"],
                "slice_count": int(row["file_count"]), "rescale_applied": True}
        converters[row["volume_id"]] = partial(_convert_dicom_one, raw_dicom, list(row["files"]), window, meta)
    return converters


# --- shared --------------------------------------------------------------------------------------------------


def hu_percentiles(data: np.ndarray, quantiles: tuple[float, ...] = (0.01, 0.5, 0.99)) -> list[int]:
    """Exact nearest-rank percentiles of int16 voxels from a histogram built slice by slice (low memory)."""
    counts = np.zeros(65536, dtype=np.int64)
    for k in range(data.shape[2]):
        counts += np.bincount(data[..., k].astype(np.int32).ravel() + 32768, minlength=65536)
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    return [int(np.searchsorted(cumulative, max(1, int(np.ceil(q * total))))) - 32768 for q in quantiles]


def build_volume_manifest(
    hu_volumes: Mapping[str, Callable[[], HUVolume]], volume_plan: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, conversion quarantine) from the files actually written, for the planned ids only.

    Reading back (rather than trusting the converter) makes the manifest describe exactly the bytes DVC tracks;
    files in the folder that the plan does not name (stale runs) are ignored.
    """
    rows, quarantine = [], []
    for plan in volume_plan.to_dict("records"):
        volume_id = plan["volume_id"]
        loader = hu_volumes.get(volume_id)
        if loader is None:
            quarantine.append(quarantine_row(
                volume_id, "series", "conversion_failed",
                "conversion failed after planning, no NIfTI was written; the exception text is in the run log "
                f"and in {volume_id}{VOLUME_SUFFIX}{ERROR_SUFFIX} beside the volumes",
                int(plan["file_count"]), stage="conversion",
            ))
            continue
        volume = loader()
        p01, p50, p99 = hu_percentiles(volume.data)
        spacing = volume.spacing
        rows.append({
            "volume_id": volume_id, "patient_key": plan["patient_key"], "study_key": plan["study_key"],
            "source": plan["source"], "shape_i": volume.shape[0], "shape_j": volume.shape[1],
            "shape_k": volume.shape[2], "spacing_i": round(spacing[0], 6), "spacing_j": round(spacing[1], 6),
            "spacing_k": round(spacing[2], 6),
            "rescale_slope": plan["rescale_slope"], "rescale_intercept": plan["rescale_intercept"],
            "rescale_slope_min": plan["rescale_slope_min"], "rescale_slope_max": plan["rescale_slope_max"],
            "rescale_intercept_min": plan["rescale_intercept_min"],
            "rescale_intercept_max": plan["rescale_intercept_max"],
            "rescale_applied": bool(volume.meta.get("rescale_applied", True)),
            "hu_p01": p01, "hu_p50": p50, "hu_p99": p99,
            "hu_min": int(volume.data.min()), "hu_max": int(volume.data.max()),
            "manufacturer": plan["manufacturer"], "file_count": int(plan["file_count"]),
            "nifti_file": f"{volume_id}{VOLUME_SUFFIX}", "sha256": volume.meta["sha256"],
        })
    stale = sorted(set(hu_volumes) - set(volume_plan["volume_id"]))
    if stale:
        logger.warning("%d volume files in the output folder are not in this run's plan; ignored", len(stale))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), quarantine_frame(quarantine)


def extract_volume_metadata(volume_plan: pd.DataFrame) -> pd.DataFrame:
    """Per-volume metadata as exported (age "058Y", sex "M"), keyed by pseudonyms: the prompt's raw material."""
    rows = []
    for plan in volume_plan.to_dict("records"):
        rows.append({
            "volume_id": plan["volume_id"], "study_key": plan["study_key"], "patient_key": plan["patient_key"],
            "patient_age": plan["patient_age"], "patient_sex": plan["patient_sex"],
            "manufacturer": plan["manufacturer"],
            "rescale_slope": plan["rescale_slope"], "rescale_intercept": plan["rescale_intercept"],
            # "[x, y]" = [between columns, between rows] mm, the format of CT-RATE's XYSpacing.
            "xy_spacing": f"[{plan['pixel_spacing_col_mm']:g}, {plan['pixel_spacing_row_mm']:g}]",
            "z_spacing": float(plan["slice_step_mm"]), "slice_count": int(plan["slice_count"]),
        })
    return pd.DataFrame(rows, columns=METADATA_COLUMNS)


def pseudonymise_reports(raw_reports: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Report table keyed by `pseudonym(study_id, "study")`, the same key as the DICOM AccessionNumber's."""
    names = {"study_id_column": "study_id", "findings_column": "findings", "impression_column": "impression"}
    names.update((params.get("reports") or {}))
    missing = [names[k] for k in names if names[k] not in raw_reports.columns]
    if missing:
        raise KeyError(f"reports table lacks column(s) {missing}; set ingestion.reports.* to its column names")
    ids = raw_reports[names["study_id_column"]]
    if not (ids.map(lambda v: isinstance(v, str)) | ids.isna()).all():
        logger.warning("report study ids are not all strings: load the CSV with dtype str, or leading zeros are lost")
    ids = ids.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    keep = ids.map(bool)
    if (~keep).sum():
        logger.warning("dropping %d report rows without a study id", int((~keep).sum()))
    out = pd.DataFrame({
        "study_key": [pseudonym(v, "study") for v in ids[keep]],
        "findings": raw_reports.loc[keep, names["findings_column"]].to_numpy(),
        "impression": raw_reports.loc[keep, names["impression_column"]].to_numpy(),
    }, columns=REPORT_COLUMNS)
    duplicated = int(out["study_key"].duplicated().sum())
    if duplicated:
        logger.warning("%d report rows repeat a study id; the first is kept", duplicated)
    return out.drop_duplicates("study_key", keep="first").reset_index(drop=True)


def collect_ingestion_quarantine(*quarantines: pd.DataFrame) -> pd.DataFrame:
    """One quarantine table for the run (file- and series-level rows from every stage)."""
    frames = [frame for frame in quarantines if frame is not None and len(frame)]
    if not frames:
        return quarantine_frame([])
    combined = pd.concat([frame[QUARANTINE_COLUMNS] for frame in frames], ignore_index=True)
    counts = Counter(combined["reason_code"])
    logger.info("ingestion quarantine: %d rows %s", len(combined), dict(sorted(counts.items())))
    return combined


# --- CT-RATE -------------------------------------------------------------------------------------------------


def plan_ctrate_volumes(
    raw_ctrate_volumes: Mapping[str, Callable[[], Any]], raw_ctrate_metadata: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CT-RATE files → plan rows (same columns as the DICOM plan, plus `source_name`) and quarantine rows."""
    plan, quarantine = plan_ctrate(raw_ctrate_volumes, raw_ctrate_metadata, params)
    _log_quarantine_summary(quarantine, "CT-RATE")
    return plan, quarantine


def _convert_ctrate_one(loader: Callable[[], Any], row: dict, params: dict) -> Any:
    try:
        volume = ctrate_to_volume(loader(), row, params)
    except Exception as exc:  # noqa: BLE001 - reported as conversion_failed, the run goes on
        logger.error("conversion of %s failed: %s: %s", row["volume_id"], type(exc).__name__, exc)
        return ConversionFailure(row["volume_id"], f"{type(exc).__name__}: {exc}")
    volume.meta.update(volume_id=row["volume_id"], manufacturer=row["manufacturer"], slice_count=row["slice_count"])
    return volume


def convert_ctrate_volumes(
    raw_ctrate_volumes: Mapping[str, Callable[[], Any]], ctrate_volume_plan: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """Lazy `{volume_id: () -> HUVolume}` for the planned CT-RATE files."""
    return {
        row["volume_id"]: partial(_convert_ctrate_one, raw_ctrate_volumes[row["partition"]], row, params)
        for row in ctrate_volume_plan.to_dict("records")
    }


def pseudonymise_ctrate_reports(raw_ctrate_reports: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """CT-RATE reports (per volume) → one row per study keyed like the volumes' `study_key`."""
    return ctrate_reports(raw_ctrate_reports, params)
