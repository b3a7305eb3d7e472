"""`write_demo_cohort`: the synthetic chest-CT phantom cohort that every pipeline can run on offline.

Writes `dicom/…` (one CT series per study, as varied as real exports), `reports.csv`
(`study_id,findings,impression`; `study_id` is the AccessionNumber), `phantom_truth.csv` (labels and
geometry as drawn) and, with `broken=True`, `broken_manifest.csv` (cases ingestion must quarantine).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.broken import BrokenStudy, write_broken_studies
from generatect_kedro.phantom.reports import Report, write_report
from generatect_kedro.phantom.studies import (
    PhantomCohortConfig,
    StudySpec,
    render_study,
    report_rng,
    sample_patient,
    sample_studies,
    write_series,
)
from generatect_kedro.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

REPORT_COLUMNS = ("study_id", "findings", "impression")
GEOMETRY_COLUMNS = ("rows", "cols", "slices", "pixel_spacing", "slice_spacing", "slice_thickness", "slope",
                    "intercept", "unsigned", "bits_stored", "manufacturer")
TRUTH_COLUMNS = ("study_id", "patient_id", "age", "sex", *CT_RATE_LABELS, *GEOMETRY_COLUMNS, "study_date",
                 "contrast", "head_first", "naming", "nesting", "series_dir", "findings_detail", "broken_case")
MANIFEST_COLUMNS = ("path", "study_id", "case", "expected_reason_code")

__all__ = ["CohortSummary", "PhantomCohortConfig", "plan_cohort", "write_demo_cohort"]


@dataclass(frozen=True)
class CohortSummary:
    """What `write_demo_cohort` wrote (counts include the broken extra studies and junk files)."""

    patients: int
    studies: int
    files: int
    broken_cases: int
    dicom_dir: Path
    reports_csv: Path
    truth_csv: Path
    broken_manifest_csv: Path | None


def write_demo_cohort(out_dir: str | Path, patients: int, seed: int, broken: bool = False,
                      config: PhantomCohortConfig | None = None) -> CohortSummary:
    """Write the phantom cohort under `out_dir`; the same arguments give byte-identical files."""
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    config = config or PhantomCohortConfig()
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    _clear_previous_cohort(out_dir, dicom_dir)
    specs, taken_ids, taken_accessions = _plan(patients, seed, config)
    report_rows: list[tuple[str, str, str]] = []
    truth_rows: list[dict[str, object]] = []
    for spec in specs:
        series = write_series(dicom_dir, spec, render_study(spec))
        report = write_report(spec.findings, report_rng(spec))
        report_rows.append((spec.accession, report.findings, report.impression))
        truth_rows.append(_truth_row(spec, series.folder.relative_to(dicom_dir).as_posix()))
    manifest_csv = None
    broken_cases = 0
    if broken:
        extra = write_broken_studies(dicom_dir, seed, patients, len(specs), config, taken_ids, taken_accessions)
        for study in extra:
            report = write_report(study.spec.findings, report_rng(study.spec))
            report = Report(report.findings, "" if study.empty_impression else report.impression)
            report_rows.append((study.spec.accession, report.findings, report.impression))
            truth_rows.append(_broken_truth_row(study))
        manifest = [asdict(case) for study in extra for case in study.cases]
        broken_cases = len(manifest)
        manifest_csv = out_dir / "broken_manifest.csv"
        _write_csv(manifest_csv, MANIFEST_COLUMNS, [[row[c] for c in MANIFEST_COLUMNS] for row in manifest])
    reports_csv, truth_csv = out_dir / "reports.csv", out_dir / "phantom_truth.csv"
    _write_csv(reports_csv, REPORT_COLUMNS, report_rows)
    _write_csv(truth_csv, TRUTH_COLUMNS, [[row[c] for c in TRUTH_COLUMNS] for row in truth_rows])
    files = sum(1 for path in dicom_dir.rglob("*") if path.is_file())
    summary = CohortSummary(
        patients=len({row["patient_id"] for row in truth_rows}), studies=len(truth_rows), files=files,
        broken_cases=broken_cases, dicom_dir=dicom_dir, reports_csv=reports_csv, truth_csv=truth_csv,
        broken_manifest_csv=manifest_csv,
    )
    logger.info("phantom cohort: %d patients, %d good studies, %d broken cases, %d files", summary.patients,
                len(specs), broken_cases, files)
    return summary


def plan_cohort(patients: int, seed: int, config: PhantomCohortConfig | None = None) -> list[StudySpec]:
    """The good studies `write_demo_cohort` writes, in order, without rendering or writing anything.

    `render_study(spec)` gives a study's HU exactly as written, `spec.series_folder()` where it lies.
    """
    return _plan(patients, seed, config or PhantomCohortConfig())[0]


def _plan(patients: int, seed: int, config: PhantomCohortConfig) -> tuple[list[StudySpec], set[str], set[str]]:
    taken_ids: set[str] = set()
    taken_accessions: set[str] = set()
    specs: list[StudySpec] = []
    for patient_index in range(patients):
        patient = sample_patient(seed, patient_index, config, taken_ids)
        specs += sample_studies(seed, patient, config, len(specs), taken_accessions)
    return specs, taken_ids, taken_accessions


def _clear_previous_cohort(out_dir: Path, dicom_dir: Path) -> None:
    """Rewriting a cohort replaces the old one; a non-empty dicom/ we did not write is never deleted."""
    if dicom_dir.exists() and any(dicom_dir.iterdir()):
        if not (out_dir / "phantom_truth.csv").exists():
            raise FileExistsError(f"{dicom_dir} is not empty and holds no phantom cohort; refusing to overwrite")
        shutil.rmtree(dicom_dir)
    (out_dir / "broken_manifest.csv").unlink(missing_ok=True)
    dicom_dir.mkdir(parents=True, exist_ok=True)


def _truth_row(spec: StudySpec, series_dir: str, broken_case: str = "", age: object = None) -> dict[str, object]:
    labels = spec.labels
    encoding = spec.encoding
    details = [{key: value for key, value in asdict(f).items() if value} for f in spec.findings]
    return {
        "study_id": spec.accession, "patient_id": spec.patient.patient_id,
        "age": spec.age if age is None else age, "sex": spec.patient.sex,
        **{label: int(label in labels) for label in CT_RATE_LABELS},
        "rows": spec.shape[1], "cols": spec.shape[2], "slices": spec.shape[0],
        "pixel_spacing": spec.pixel_spacing, "slice_spacing": spec.slice_spacing,
        "slice_thickness": spec.slice_thickness, "slope": encoding.slope, "intercept": encoding.intercept,
        "unsigned": int(encoding.unsigned), "bits_stored": encoding.bits_stored, "manufacturer": spec.manufacturer,
        "study_date": spec.study_date.isoformat(), "contrast": int(spec.contrast), "head_first": int(spec.head_first),
        "naming": spec.naming, "nesting": spec.nesting, "series_dir": series_dir,
        "findings_detail": json.dumps(details, sort_keys=True), "broken_case": broken_case,
    }


def _broken_truth_row(study: BrokenStudy) -> dict[str, object]:
    """Geometry columns describe the series as rendered, before the deliberate damage."""
    codes = ";".join(sorted({case.expected_reason_code or case.case for case in study.cases}))
    return _truth_row(study.spec, study.series_dir, codes, age="" if study.dicom_age_unparseable else None)


def _write_csv(path: Path, header, rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
