"""The public CT-RATE layout → the same plan, volumes and quarantine as DICOM ingestion.

Layout: NIfTI volumes named `<split>_<patient>_<study>_<reconstruction>.nii.gz` (`train_1_a_1.nii.gz`: patient
`train_1`, study `train_1_a`, reconstruction 1) in any folder structure, a metadata CSV (`VolumeName`,
`Manufacturer`, `RescaleSlope`, `RescaleIntercept`, `XYSpacing` as "[0.75, 0.75]", `ZSpacing`, `PatientSex`,
`PatientAge` as "058Y", optionally `ImagePositionPatient`/`ImageOrientationPatient`) and a reports CSV
(`VolumeName`, `Findings_EN`, `Impressions_EN`).

Intensities, never rescaled twice: nibabel applies a header's scl_slope/scl_inter itself; if it did, or if the
data already looks like HU (1st percentile below `ctrate.hu_p01_threshold`, -500 by default: air is about
-1000 HU but >= 0 in raw unsigned storage), the metadata slope/intercept are *not* applied. The parameter
`ctrate.already_hu: auto | true | false` overrides the detection.

Array orientation assumed: CT-RATE files were converted from DICOM with i = DICOM column, j = DICOM row,
k = slice (the order the dataset's own `fix_metadata.py` assumes when it sets spacing (x, y, z) =
(XYSpacing[0], XYSpacing[1], ZSpacing), origin = ImagePositionPatient and direction = (row, column,
row × column)). The affine (`ctrate.geometry: auto | metadata | header | assumed`) comes, in auto mode, from:
1. metadata IPP/IOP when the CSV has them: the DICOM construction of `dicom.hu.dicom_affine_ras`;
2. else the file's own affine when its qform/sform is set and its voxel sizes match the metadata within 1 %
   (the re-exported "fixed" files);
3. else the assumed axial orientation (LPS row = +x, column = +y, slices towards +z, origin 0):
   RAS affine diag(-XYSpacing[0], -XYSpacing[1], ZSpacing), with k reversed for the manufacturers listed in
   `ctrate.reverse_slices_for_manufacturers` (the released code reverses 'PNMS' volumes, 8.4 % of CT-RATE).
Then `canonical()`, as for DICOM.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from generatect_kedro.dicom.hu import dicom_affine_ras
from generatect_kedro.dicom.series import PLAN_COLUMNS, quarantine_frame, quarantine_row
from generatect_kedro.utils.identifiers import pseudonym
from generatect_kedro.volume import HUVolume, canonical, hu_to_int16

logger = logging.getLogger(__name__)

STAGE = "ctrate_plan"
CTRATE_PLAN_COLUMNS = [*PLAN_COLUMNS, "source_name", "partition"]
_NAME = re.compile(r"^(?P<study>(?P<patient>[A-Za-z]+_\d+)_[A-Za-z]+)_(?P<recon>\d+)$")

DEFAULTS: dict[str, Any] = {
    "already_hu": "auto",
    "hu_p01_threshold": -500.0,
    "geometry": "auto",
    "spacing_range_xy": [0.2, 5.0],
    "spacing_range_z": [0.2, 10.0],
    "reverse_slices_for_manufacturers": ["PNMS"],
    "volume_name_column": "VolumeName",
    "findings_column": "Findings_EN",
    "impression_column": "Impressions_EN",
}


def ctrate_options(params: Mapping[str, Any] | None) -> dict[str, Any]:
    options = {**DEFAULTS, **dict((params or {}).get("ctrate") or {})}
    if str(options["already_hu"]).lower() not in ("auto", "true", "false"):
        raise ValueError(f"ctrate.already_hu must be auto, true or false, got {options['already_hu']!r}")
    if options["geometry"] not in ("auto", "metadata", "header", "assumed"):
        raise ValueError(f"ctrate.geometry must be auto, metadata, header or assumed, got {options['geometry']!r}")
    return options


def parse_volume_name(name: str) -> tuple[str, str, str]:
    """`train_1_a_1.nii.gz` → ("train_1", "train_1_a", "1"); ValueError when it does not follow the layout."""
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name
    match = _NAME.match(stem)
    if not match:
        raise ValueError(f"{name!r} is not a CT-RATE volume name like train_1_a_1.nii.gz")
    return match["patient"], match["study"], match["recon"]


def parse_list(text: Any) -> list[float]:
    """"[0.75, 0.75]" (or a real list) → [0.75, 0.75]."""
    if isinstance(text, (list, tuple, np.ndarray)):
        return [float(v) for v in text]
    value = ast.literal_eval(str(text).strip())
    return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _optional_list(row: Mapping[str, Any], column: str, count: int) -> list[float] | None:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        values = parse_list(value)
    except (ValueError, SyntaxError):
        return None
    return values if len(values) == count else None


def plan_ctrate(
    volumes: Mapping[str, Callable[[], nib.Nifti1Image]], metadata: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plan, quarantine) for CT-RATE files; one plan row per usable volume, one quarantine row per other file."""
    options = ctrate_options(params)
    low, high = (int(v) for v in params.get("slice_count_range", (10, 2000)))
    name_column = options["volume_name_column"]
    meta_by_name = {str(r[name_column]): r for r in metadata.to_dict("records")}
    plan_rows, quarantine = [], []
    for partition in sorted(volumes):
        rel = f"{partition}.nii.gz"
        row_or_reason = _plan_one(partition, rel, volumes[partition], meta_by_name, options, (low, high))
        if isinstance(row_or_reason, tuple):
            quarantine.append(quarantine_row(rel, "file", *row_or_reason, 1, STAGE))
        else:
            plan_rows.append(row_or_reason)
    logger.info("planned %d CT-RATE volumes; %d quarantined", len(plan_rows), len(quarantine))
    return pd.DataFrame(plan_rows, columns=CTRATE_PLAN_COLUMNS), quarantine_frame(quarantine)


def _plan_one(
    partition: str,
    rel: str,
    loader: Callable[[], nib.Nifti1Image],
    meta_by_name: Mapping[str, Mapping[str, Any]],
    options: Mapping[str, Any],
    slice_range: tuple[int, int],
) -> dict[str, Any] | tuple[str, str]:
    """A plan row for one CT-RATE file, or (reason_code, reason) when it cannot be used."""
    name = PurePosixPath(rel).name
    try:
        patient, study, _ = parse_volume_name(name)
    except ValueError as exc:
        return "missing_metadata", str(exc)
    meta = meta_by_name.get(name)
    if meta is None:
        return "missing_metadata", f"{name} has no row in the metadata CSV"
    try:
        shape = tuple(int(s) for s in loader().shape)
    except Exception as exc:  # noqa: BLE001 - any read failure is a property of the file
        return "unreadable_volume", f"cannot read the NIfTI file: {type(exc).__name__}: {exc}"
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        return "inconsistent_geometry", f"expected a 3-D volume, got shape {shape}"
    try:
        xy = parse_list(meta["XYSpacing"])
        z = float(meta["ZSpacing"])
        slope, intercept = float(meta["RescaleSlope"]), float(meta["RescaleIntercept"])
    except (KeyError, TypeError, ValueError, SyntaxError) as exc:
        return "missing_metadata", f"metadata row cannot be parsed: {type(exc).__name__}: {exc}"
    if not (math.isfinite(slope) and slope > 0 and math.isfinite(intercept)):
        return "missing_metadata", f"RescaleSlope {slope} / RescaleIntercept {intercept} are not usable"
    problem = _spacing_problem(xy, z, options)
    if problem:
        return "implausible_spacing", problem
    low, high = slice_range
    if not low <= shape[2] <= high:
        return "slice_count_out_of_range", f"{shape[2]} slices, outside the accepted range {low}..{high}"
    return {
        "volume_id": pseudonym(name[: -len(".nii.gz")], "ser"),
        "patient_key": pseudonym(patient, "pat"),
        "study_key": pseudonym(study, "study"),
        "source": "ctrate", "file_count": 1, "slice_count": shape[2], "files": [rel],
        "slice_positions_mm": None, "rows": shape[1], "columns": shape[0],
        "pixel_spacing_row_mm": xy[1], "pixel_spacing_col_mm": xy[0], "slice_step_mm": z, "slice_thickness_mm": z,
        "orientation": _optional_list(meta, "ImageOrientationPatient", 6),
        "origin_lps": _optional_list(meta, "ImagePositionPatient", 3),
        "manufacturer": _text(meta.get("Manufacturer")), "patient_age": _text(meta.get("PatientAge")),
        "patient_sex": _text(meta.get("PatientSex")),
        "rescale_slope": slope, "rescale_intercept": intercept, "rescale_slope_min": slope,
        "rescale_slope_max": slope, "rescale_intercept_min": intercept, "rescale_intercept_max": intercept,
        "transfer_syntax": None, "source_name": name, "partition": partition,
    }


def _spacing_problem(xy: list[float], z: float, options: Mapping[str, Any]) -> str | None:
    (xy_low, xy_high), (z_low, z_high) = options["spacing_range_xy"], options["spacing_range_z"]
    if len(xy) != 2 or not all(math.isfinite(v) and xy_low <= v <= xy_high for v in xy):
        return f"XYSpacing {xy} mm is outside the plausible range {xy_low}..{xy_high} mm"
    if not (math.isfinite(z) and z_low <= z <= z_high):
        return f"ZSpacing {z} mm is outside the plausible range {z_low}..{z_high} mm"
    return None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() or None


def ctrate_affine(
    image: nib.Nifti1Image, row: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[np.ndarray, str, bool]:
    """(RAS affine, where it came from, whether k must be reversed first) — see the module docstring."""
    spacing = (float(row["pixel_spacing_col_mm"]), float(row["pixel_spacing_row_mm"]),
               float(row["slice_step_mm"]))
    mode = options["geometry"]
    orientation, origin = row.get("orientation"), row.get("origin_lps")
    has_dicom_geometry = orientation is not None and origin is not None and len(orientation) == 6
    if mode == "metadata" or (mode == "auto" and has_dicom_geometry):
        if not has_dicom_geometry:
            raise ValueError("ctrate.geometry is 'metadata' but the metadata lacks ImagePositionPatient/Orientation")
        pixel_spacing = (spacing[1], spacing[0])  # DICOM order: between rows, between columns
        return dicom_affine_ras(origin, orientation, pixel_spacing, spacing[2]), "metadata", False
    header = image.header
    header_set = int(header["sform_code"]) > 0 or int(header["qform_code"]) > 0
    header_spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    if mode == "header" or (mode == "auto" and header_set and np.allclose(header_spacing, spacing, rtol=0.01)):
        return np.asarray(image.affine, dtype=np.float64), "header", False
    reverse = str(row.get("manufacturer") or "") in set(options["reverse_slices_for_manufacturers"])
    return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]), "assumed", reverse


def ctrate_to_volume(image: nib.Nifti1Image, row: Mapping[str, Any], params: Mapping[str, Any]) -> HUVolume:
    """One CT-RATE file → canonical int16 HU `HUVolume`, applying slope/intercept at most once."""
    options = ctrate_options(params)
    low, high = (float(v) for v in params.get("hu_window", (-1000, 1000)))
    proxy = image.dataobj
    header_scaled = bool(getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0)
    data = np.asarray(proxy, dtype=np.float32)  # nibabel applies scl_slope/scl_inter here when present
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    p01 = float(np.percentile(data[::4, ::4, ::2], 1))
    setting = str(options["already_hu"]).lower()
    if setting == "auto":
        already_hu = header_scaled or p01 < float(options["hu_p01_threshold"])
    else:
        already_hu = setting == "true"
    slope, intercept = float(row["rescale_slope"]), float(row["rescale_intercept"])
    if not already_hu:
        data *= np.float32(slope)
        data += np.float32(intercept)
    affine, geometry_source, reverse = ctrate_affine(image, row, options)
    if reverse:
        data = data[..., ::-1]
    voxels = hu_to_int16(np.clip(data, low, high, out=data))
    meta = {
        "source": "ctrate", "hu_window": [low, high], "rescale_applied": not already_hu,
        "header_scaled": header_scaled, "raw_p01": round(p01, 3), "geometry_source": geometry_source,
        "slices_reversed": reverse, "rescale_slope_min": slope, "rescale_slope_max": slope,
        "rescale_intercept_min": intercept, "rescale_intercept_max": intercept,
    }
    return canonical(HUVolume(voxels, affine, meta))


def ctrate_reports(reports: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """CT-RATE reports (one row per volume) → one row per study: study_key, findings, impression."""
    options = ctrate_options(params)
    out = []
    for row in reports.to_dict("records"):
        try:
            _, study, _ = parse_volume_name(str(row[options["volume_name_column"]]))
        except ValueError:
            logger.warning("skipping a report row whose VolumeName does not follow the CT-RATE layout")
            continue
        out.append({"study_key": pseudonym(study, "study"), "findings": row.get(options["findings_column"]),
                    "impression": row.get(options["impression_column"])})
    frame = pd.DataFrame(out, columns=["study_key", "findings", "impression"])
    return frame.drop_duplicates("study_key", keep="first").reset_index(drop=True)
