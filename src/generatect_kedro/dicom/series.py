"""Series planning: which files make which accepted axial CT volume, and why every other file was set aside.

Input is the header frame of `dicom.headers.scan_headers`. Files are grouped by SeriesInstanceUID (never by
folder), sorted along the slice normal by ImagePositionPatient (never by file name or InstanceNumber) and
checked for duplicates, gaps and inconsistent geometry. Every input file ends up either in exactly one
accepted series (`plan.file_count`) or counted by exactly one quarantine row (file-level rows count 1,
series-level rows count the series' remaining files) — the accounting invariant tests check.

A defect shared by every file of a series (e.g. no RescaleSlope anywhere) is reported once, at series level.
Quarantine `item` is the file path relative to the input root, or the series pseudonym; reasons never
contain patient identifiers.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import UID

from generatect_kedro.utils.identifiers import pseudonym

logger = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["item", "level", "reason_code", "reason", "file_count", "stage"]
REASON_CODES = (
    "not_dicom", "truncated", "no_pixel_data", "missing_rescale", "not_ct", "localizer", "duplicate_slice",
    "missing_slice", "inconsistent_orientation", "inconsistent_geometry", "undecodable_transfer_syntax",
    "unsafe_patient_id", "not_axial", "slice_count_out_of_range", "conversion_failed",
    # CT-RATE layout (dicom.ctrate):
    "missing_metadata", "unreadable_volume", "implausible_spacing",
)
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.")
STAGE = "dicom_plan"


@dataclass(frozen=True)
class PlanConfig:
    """Planning knobs (from `parameters_ingestion.yml`, key `ingestion`)."""

    slice_count_range: tuple[int, int] = (10, 2000)
    slice_step_tolerance: float = 0.1  # allowed |step - median| as a fraction of the median step
    position_tolerance_mm: float = 0.01  # two slices closer than this share one position
    orientation_tolerance: float = 1e-3  # max |Δ cosine| within a series
    spacing_tolerance_mm: float = 1e-3  # max |Δ PixelSpacing| within a series
    max_axial_tilt_deg: float = 20.0  # slice normal vs. the patient's S axis
    patient_id_policy: str = "quarantine"  # or "pseudonymise"

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> PlanConfig:
        params = dict(params or {})
        low, high = params.get("slice_count_range", cls.slice_count_range)
        policy = str(params.get("patient_id_policy", cls.patient_id_policy))
        if policy not in ("quarantine", "pseudonymise"):
            raise ValueError(f"patient_id_policy must be 'quarantine' or 'pseudonymise', got {policy!r}")
        return cls(
            slice_count_range=(int(low), int(high)),
            slice_step_tolerance=float(params.get("slice_step_tolerance", cls.slice_step_tolerance)),
            position_tolerance_mm=float(params.get("position_tolerance_mm", cls.position_tolerance_mm)),
            orientation_tolerance=float(params.get("orientation_tolerance", cls.orientation_tolerance)),
            spacing_tolerance_mm=float(params.get("spacing_tolerance_mm", cls.spacing_tolerance_mm)),
            max_axial_tilt_deg=float(params.get("max_axial_tilt_deg", cls.max_axial_tilt_deg)),
            patient_id_policy=policy,
        )


class _SeriesRejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def quarantine_row(item: str, level: str, code: str, reason: str, file_count: int, stage: str = STAGE) -> dict:
    if code not in REASON_CODES:
        raise ValueError(f"unknown quarantine reason code {code!r}")
    return {"item": item, "level": level, "reason_code": code, "reason": reason, "file_count": int(file_count),
            "stage": stage}


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS).astype({"file_count": "int64"})


def is_unsafe_patient_id(patient_id: str | None) -> bool:
    """Path separators, `..` or control characters: such an id must never reach a path or a shell."""
    return bool(patient_id) and bool(_UNSAFE_ID.search(str(patient_id)))


def file_defect(row: Mapping[str, Any], cfg: PlanConfig) -> tuple[str, str] | None:
    """(code, reason) for a file that cannot be part of any volume, else None. Checked in this order."""
    if not row["readable"]:
        if row["has_dicm_prefix"]:
            return "truncated", f"file has a DICOM prefix but its header cannot be read ({row['error']})"
        return "not_dicom", f"not a DICOM file: {row['error']}"
    if not row.get("header_complete", True):
        return "truncated", f"the file ends inside its header, after {row['file_size']} bytes"
    if row["Modality"] != "CT":
        return "not_ct", f"modality is {row['Modality'] or 'missing'}, not CT"
    if not row["SeriesInstanceUID"]:
        return "not_dicom", "DICOM object without SeriesInstanceUID cannot belong to a series"
    if not row["has_pixel_data"]:
        return "no_pixel_data", "file has no PixelData element"
    if not row["pixel_length_ok"]:
        expected = (row["Rows"] or 0) * (row["Columns"] or 0) * (row["BitsAllocated"] or 0) // 8
        return "truncated", (
            f"pixel data is incomplete: the file has {row['file_size']} bytes and ends before the declared "
            f"pixel data, or holds fewer than the {expected} bytes of a {row['Rows']}x{row['Columns']} image"
        )
    if not row["decodable"]:
        ts = UID(row["TransferSyntaxUID"])
        return "undecodable_transfer_syntax", (
            f"transfer syntax {ts} ({ts.name}) cannot be decoded by the installed pydicom pixel plugins"
        )
    if row["ImageType"] and "LOCALIZER" in row["ImageType"]:
        image_type = "\\".join(row["ImageType"])
        return "localizer", f"ImageType {image_type} marks a localizer (scout) image"
    missing = [k for k in ("RescaleSlope", "RescaleIntercept") if _nan(row[k])]
    if missing:
        return "missing_rescale", f"{' and '.join(missing)} missing: stored values cannot be turned into HU"
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
               if row[k] is None]
    if missing:
        return "inconsistent_geometry", f"{', '.join(missing)} missing: the slice cannot be placed in space"
    if cfg.patient_id_policy == "quarantine" and is_unsafe_patient_id(row["PatientID"]):
        return "unsafe_patient_id", (
            "PatientID contains a path separator, '..' or a control character "
            "(set ingestion.patient_id_policy: pseudonymise to accept it)"
        )
    return None


def plan_series(
    headers: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    slice_content: Callable[[str], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plan, quarantine): one plan row per accepted series, one quarantine row per rejected file or series.

    `slice_content(path)` returns a slice's HU (or stored) pixels; it decides whether two files at one
    position are copies. Without it only byte-identical headers (same SOPInstanceUID and size) count as copies.
    """
    cfg = PlanConfig.from_params(params)
    rows = [_normalise(row) for row in headers.to_dict("records")]
    quarantine: list[dict] = []
    defects = {row["path"]: file_defect(row, cfg) for row in rows}

    by_series: dict[str, list[dict]] = {}
    for row in rows:
        uid = row["SeriesInstanceUID"] if row["readable"] else None
        if uid:
            by_series.setdefault(uid, []).append(row)
        else:
            code, reason = defects[row["path"]]
            quarantine.append(quarantine_row(row["path"], "file", code, reason, 1))

    plan_rows = []
    for uid in sorted(by_series):
        series_rows = by_series[uid]
        key = pseudonym(uid, "ser")
        codes = {defects[r["path"]][0] if defects[r["path"]] else None for r in series_rows}
        if len(series_rows) > 1 and len(codes) == 1 and None not in codes:  # one shared defect: say it once
            code, reason = defects[series_rows[0]["path"]]
            quarantine.append(quarantine_row(key, "series", code, f"every file: {reason}", len(series_rows)))
            continue
        good = []
        for r in series_rows:
            if defects[r["path"]]:
                code, reason = defects[r["path"]]
                quarantine.append(quarantine_row(r["path"], "file", code, reason, 1))
            else:
                good.append(r)
        if not good:  # every file already has its own quarantine row (e.g. a lone localizer)
            continue
        try:
            ordered, copies = _check_series(good, cfg, slice_content)
            _check_decodes(ordered, slice_content)
        except _SeriesRejected as rejected:
            quarantine.append(quarantine_row(key, "series", rejected.code, rejected.reason, len(good)))
            continue
        quarantine.extend(copies)
        plan_rows.append(_plan_row(key, ordered))

    plan = pd.DataFrame(plan_rows, columns=PLAN_COLUMNS)
    quarantine_df = quarantine_frame(quarantine)
    logger.info(
        "planned %d series from %d files: %d files accepted, %d quarantine rows",
        len(plan), len(rows), int(plan["file_count"].sum()) if len(plan) else 0, len(quarantine_df),
    )
    return plan, quarantine_df


def _check_decodes(rows: list[dict], slice_content: Callable[[str], np.ndarray] | None) -> None:
    """A decoder being installed does not mean the codestreams decode: try one slice of a compressed series."""
    ts = UID(str(rows[0]["TransferSyntaxUID"] or ""))
    if slice_content is None or not ts or not ts.is_compressed:
        return
    try:
        slice_content(rows[len(rows) // 2]["path"])
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the series cannot be converted
        raise _SeriesRejected(
            "undecodable_transfer_syntax",
            f"{ts.name} pixel data could not be decoded ({type(exc).__name__}); re-export uncompressed",
        ) from exc


def _check_series(
    rows: list[dict], cfg: PlanConfig, slice_content: Callable[[str], np.ndarray] | None
) -> tuple[list[dict], list[dict]]:
    """Series rows sorted along the normal, plus file-level rows for dropped copies; raises `_SeriesRejected`."""
    if len(rows) == 1:
        raise _SeriesRejected("localizer", "series has a single slice (a scout or a single image), not a volume")
    iops = np.array([r["ImageOrientationPatient"] for r in rows], dtype=np.float64)
    deviation = float(np.abs(iops - iops[0]).max())
    if deviation > cfg.orientation_tolerance:
        raise _SeriesRejected(
            "inconsistent_orientation",
            f"ImageOrientationPatient differs between slices by up to {deviation:.4f} "
            f"(tolerance {cfg.orientation_tolerance})",
        )
    normal = np.cross(iops[0, :3], iops[0, 3:])
    normal /= np.linalg.norm(normal)
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if tilt > cfg.max_axial_tilt_deg:
        raise _SeriesRejected(
            "not_axial", f"slice normal is {tilt:.1f} degrees from the head-feet axis "
            f"(axial means at most {cfg.max_axial_tilt_deg:g}); a coronal/sagittal or oblique series"
        )
    spacings = np.array([r["PixelSpacing"] for r in rows], dtype=np.float64)
    spread = float(np.abs(spacings - spacings[0]).max())
    if spread > cfg.spacing_tolerance_mm:
        raise _SeriesRejected(
            "inconsistent_geometry", f"PixelSpacing varies within the series by {spread:.4f} mm "
            f"({spacings.min():.4f} to {spacings.max():.4f} mm)",
        )
    matrices = sorted({(int(r["Rows"]), int(r["Columns"])) for r in rows})
    if len(matrices) > 1:
        shown = ", ".join(f"{a}x{b}" for a, b in matrices)
        raise _SeriesRejected("inconsistent_geometry", f"slices have different matrices: {shown}")

    positions = np.array([np.dot(r["ImagePositionPatient"], normal) for r in rows])
    order = np.lexsort((np.array([r["path"] for r in rows]), positions))
    rows = [rows[i] for i in order]
    positions = positions[order]

    kept, copies = [rows[0]], []
    kept_positions = [positions[0]]
    for row, position in zip(rows[1:], positions[1:], strict=True):
        if abs(position - kept_positions[-1]) > cfg.position_tolerance_mm:
            kept.append(row)
            kept_positions.append(position)
            continue
        original = kept[-1]
        if not _same_content(original, row, slice_content):
            raise _SeriesRejected(
                "duplicate_slice",
                f"two different images at the same slice position {position:.2f} mm along the normal",
            )
        copies.append(quarantine_row(
            row["path"], "file", "duplicate_slice",
            f"copy of another file at slice position {position:.2f} mm with identical pixels; dropped", 1,
        ))
    if len(kept) == 1:
        raise _SeriesRejected("localizer", "series has a single distinct slice (after dropping copies)")

    steps = np.diff(np.asarray(kept_positions))
    median = float(np.median(steps))
    limit = cfg.slice_step_tolerance * median
    bad = np.flatnonzero(np.abs(steps - median) > limit)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / median
        what = f"about {round(ratio) - 1} slice(s) missing" if ratio > 1.5 else "irregular slice spacing"
        raise _SeriesRejected(
            "missing_slice",
            f"gap between slices {i + 1} and {i + 2}: {steps[i]:.1f} mm where {median:.1f} mm is expected "
            f"({what}; {bad.size} irregular step(s) in {len(kept)} slices)",
        )
    low, high = cfg.slice_count_range
    if not low <= len(kept) <= high:
        raise _SeriesRejected(
            "slice_count_out_of_range", f"{len(kept)} slices, outside the accepted range {low}..{high}"
        )
    for row, position in zip(kept, kept_positions, strict=True):
        row["_position"] = float(position)
    kept[0]["_step"] = median
    return kept, copies


def _same_content(a: dict, b: dict, slice_content: Callable[[str], np.ndarray] | None) -> bool:
    if a["SOPInstanceUID"] == b["SOPInstanceUID"] and a["file_size"] == b["file_size"] and slice_content is None:
        return True
    if slice_content is None:
        return False
    return bool(np.array_equal(slice_content(a["path"]), slice_content(b["path"])))


PLAN_COLUMNS = [
    "volume_id", "patient_key", "study_key", "source", "file_count", "slice_count", "files", "slice_positions_mm",
    "rows", "columns", "pixel_spacing_row_mm", "pixel_spacing_col_mm", "slice_step_mm", "slice_thickness_mm",
    "orientation", "origin_lps", "manufacturer", "patient_age", "patient_sex", "rescale_slope", "rescale_intercept",
    "rescale_slope_min",
    "rescale_slope_max", "rescale_intercept_min", "rescale_intercept_max", "transfer_syntax",
]


def _most_common(values: list[Any]) -> Any:
    present = [v for v in values if v not in (None, "") and not _nan(v)]
    return Counter(present).most_common(1)[0][0] if present else None


def _plan_row(volume_id: str, rows: list[dict]) -> dict[str, Any]:
    first = rows[0]
    patient = _most_common([r["PatientID"] for r in rows])
    study = _most_common([r["AccessionNumber"] for r in rows]) or _most_common([r["StudyInstanceUID"] for r in rows])
    slopes = [float(r["RescaleSlope"]) for r in rows]
    intercepts = [float(r["RescaleIntercept"]) for r in rows]
    thickness = _most_common([r["SliceThickness"] for r in rows])
    return {
        "volume_id": volume_id,
        # A series without PatientID still gets a stable key: one per study, never a shared "unknown".
        "patient_key": pseudonym(patient, "pat") if patient else pseudonym(f"no-patient-id:{study}", "pat"),
        "study_key": pseudonym(study, "study") if study else None,
        "source": "dicom",
        "file_count": len(rows),
        "slice_count": len(rows),
        "files": [r["path"] for r in rows],
        "slice_positions_mm": [r["_position"] for r in rows],
        "rows": int(first["Rows"]),
        "columns": int(first["Columns"]),
        "pixel_spacing_row_mm": float(first["PixelSpacing"][0]),
        "pixel_spacing_col_mm": float(first["PixelSpacing"][1]),
        "slice_step_mm": float(first["_step"]),
        "slice_thickness_mm": float(thickness) if thickness is not None else math.nan,
        "orientation": [float(v) for v in first["ImageOrientationPatient"]],
        "origin_lps": [float(v) for v in first["ImagePositionPatient"]],
        "manufacturer": _most_common([r["Manufacturer"] for r in rows]),
        "patient_age": _most_common([r["PatientAge"] for r in rows]),
        "patient_sex": _most_common([r["PatientSex"] for r in rows]),
        "rescale_slope": _most_common(slopes),  # the series' value; min/max show any variation
        "rescale_intercept": _most_common(intercepts),
        "rescale_slope_min": min(slopes),
        "rescale_slope_max": max(slopes),
        "rescale_intercept_min": min(intercepts),
        "rescale_intercept_max": max(intercepts),
        "transfer_syntax": _most_common([r["TransferSyntaxUID"] for r in rows]),
    }


_TEXT_COLUMNS = ("error", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber", "PatientID",
                 "PatientAge", "PatientSex", "Modality", "TransferSyntaxUID", "Manufacturer")


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    """Missing text may arrive as NaN (pandas); treat it as None."""
    for key in _TEXT_COLUMNS:
        if key in row and _nan(row[key]):
            row[key] = None
    return row


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
