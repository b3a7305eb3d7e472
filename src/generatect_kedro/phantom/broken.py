"""Deliberately broken studies and files for ingestion's quarantine path (`broken=True`).

Each case lives in its own extra patient, so that quarantining it never touches a good study; cases that
break single files (truncated, non-DICOM, pixel-less, localizer, duplicate) sit next to an otherwise valid
series. Every case is listed in `broken_manifest.csv` with the reason code ingestion is expected to use:
`path` is relative to `dicom/` (a file for file-level cases, the folder holding exactly that series for
series-level cases, empty for report-level cases) and `study_id` is the study's AccessionNumber.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, MRImageStorage

from generatect_kedro.dicom.writer import SeriesGeometry, derived_uid, write_ct_series
from generatect_kedro.phantom.studies import (
    PhantomCohortConfig,
    StudySpec,
    WrittenSeries,
    render_study,
    sample_patient,
    sample_studies,
    study_tags,
    write_series,
)
from generatect_kedro.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

UNSAFE_PATIENT_ID = "../../etc/passwd"
UNPARSEABLE_AGE = "ABC"


@dataclass(frozen=True)
class BrokenCase:
    path: str  # relative to dicom/; "" for report-level cases
    study_id: str
    case: str
    expected_reason_code: str  # "" where ingestion must accept the data


@dataclass
class BrokenStudy:
    """An extra study written for one or more broken cases (it still has a report and a truth row)."""

    spec: StudySpec
    series_dir: str  # relative to dicom/: the folder of its (first) CT series
    files: int
    cases: list[BrokenCase]
    dicom_age_unparseable: bool = False
    empty_impression: bool = False


def write_broken_studies(dicom_dir: Path, seed: int, first_patient: int, first_position: int,
                         config: PhantomCohortConfig, taken_ids: set[str],
                         taken_accessions: set[str]) -> list[BrokenStudy]:
    """Write every broken case; patients are numbered after the good ones, so good files do not change."""
    builders: list[Callable[[Path, StudySpec], BrokenStudy]] = [
        _junk_next_to_valid_series, _mixed_series, _missing_rescale, _not_ct, _duplicate_slice, _missing_slice,
        _inconsistent_orientation, _undecodable, _unsafe_patient_id, _unparseable_age, _empty_impression,
    ]
    studies = []
    for offset, build in enumerate(builders):
        patient = sample_patient(seed, first_patient + offset, config, taken_ids)
        if build is _unsafe_patient_id:
            patient = replace(patient, patient_id=UNSAFE_PATIENT_ID)
        spec = sample_studies(seed, patient, config, first_position + offset, taken_accessions, follow_up=False)[0]
        # one series per folder, predictable names: each case stays about one thing
        spec = replace(spec, nesting="patient/study/series", naming="IM", shuffled_names=False)
        studies.append(build(dicom_dir, spec))
    logger.info("wrote %d broken cases in %d extra studies", sum(len(s.cases) for s in studies), len(studies))
    return studies


def _relative(dicom_dir: Path, path: Path) -> str:
    return path.relative_to(dicom_dir).as_posix()


def _rewrite(path: Path, edit: Callable[[Dataset], None]) -> None:
    """Read a written file, change its header, write it back in place (atomically)."""
    ds = pydicom.dcmread(path)
    edit(ds)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)


def _valid(dicom_dir: Path, spec: StudySpec, **kwargs) -> WrittenSeries:
    return write_series(dicom_dir, spec, render_study(spec), **kwargs)


def _junk_next_to_valid_series(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    spec = replace(spec, nesting="flat")  # the study folder is the series folder: junk sits beside the slices
    series = _valid(dicom_dir, spec)
    folder, study_id = series.folder, spec.accession
    top = series.paths[-1]  # an interrupted copy: the last (most superior) slice is cut short
    payload = top.read_bytes()
    atomic_write_bytes(top, payload[: len(payload) - series.hu[0].size])
    atomic_write_text(folder / "notes.txt", "Exported from PACS. Please check slice 12 before reading.\n")
    atomic_write_bytes(folder / "preview.jpg", bytes(np.random.default_rng([*spec.stream, 40]).integers(
        0, 256, 512, dtype=np.uint8)))
    localizer = _localizer(folder, spec, series.hu)
    pixel_less = folder / "IM90002.dcm"
    pixel_less.write_bytes(series.paths[0].read_bytes())

    def protocol_page(ds: Dataset) -> None:
        del ds.PixelData
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 99, "Patient Protocol", 1
        ds.SeriesInstanceUID = derived_uid(*spec.uid_entropy, "protocol series")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derived_uid(*spec.uid_entropy, "protocol")

    _rewrite(pixel_less, protocol_page)
    cases = [BrokenCase(_relative(dicom_dir, top), study_id, "truncated DICOM file", "truncated"),
             BrokenCase(_relative(dicom_dir, folder / "notes.txt"), study_id, "text file", "not_dicom"),
             BrokenCase(_relative(dicom_dir, folder / "preview.jpg"), study_id, "junk .jpg file", "not_dicom"),
             BrokenCase(_relative(dicom_dir, pixel_less), study_id, "CT file without pixel data", "no_pixel_data"),
             BrokenCase(_relative(dicom_dir, localizer), study_id, "localizer in a CT study folder", "localizer")]
    return BrokenStudy(spec, _relative(dicom_dir, folder), len(series.paths) + 4, cases)


def _localizer(folder: Path, spec: StudySpec, hu: np.ndarray) -> Path:
    """A coronal scout (mean attenuation through the body) in its own series, as scanners store one."""
    slices, _, cols = hu.shape
    projection = hu.mean(axis=1)[::-1]  # rows from superior to inferior
    top = spec.table_z + (slices - 1) / 2 * spec.slice_spacing
    geometry = SeriesGeometry(pixel_spacing=(spec.slice_spacing, spec.pixel_spacing), slice_spacing=1.0,
                              column_direction=(0.0, 0.0, -1.0),
                              origin_lps=(-(cols - 1) / 2 * spec.pixel_spacing, 0.0, top))
    tags = {**study_tags(spec), "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesNumber": 1,
            "SeriesDescription": "Topogram 0.6 T20f"}
    entropy = (*spec.uid_entropy, "localizer")
    return write_ct_series(projection[None], folder, geometry, spec.encoding, tags, ["IM90001.dcm"],
                           uid_entropy=entropy)[0]


def _mixed_series(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    """Two valid reconstructions of one scan in one folder: ingestion must split and keep both."""
    slices = spec.shape[0] - spec.shape[0] % 2
    spec = replace(spec, shape=(slices, *spec.shape[1:]), head_first=False)
    thin = _valid(dicom_dir, spec)
    folder = thin.folder.relative_to(dicom_dir).as_posix()
    thick_spec = replace(spec, shape=(slices // 2, *spec.shape[1:]), slice_spacing=2 * spec.slice_spacing,
                         slice_thickness=2 * spec.slice_thickness)
    thick_hu = (thin.hu[0::2] + thin.hu[1::2]) / 2  # each thick slice averages two thin ones, same centre
    thick = write_series(dicom_dir, thick_spec, thick_hu, series_number=3, folder=folder, name_offset=1000,
                         extra_tags={"SeriesDescription": f"AXIAL {thick_spec.slice_thickness:g}mm"})
    case = BrokenCase(folder, spec.accession, "two CT series mixed in one folder", "")
    return BrokenStudy(spec, folder, len(thin.paths) + len(thick.paths), [case])


def _series_case(dicom_dir: Path, spec: StudySpec, case: str, code: str,
                 edit_files: Callable[[WrittenSeries], int] | None = None, **kwargs) -> BrokenStudy:
    series = _valid(dicom_dir, spec, **kwargs)
    files = len(series.paths) + (edit_files(series) if edit_files else 0)
    folder = _relative(dicom_dir, series.folder)
    return BrokenStudy(spec, folder, files, [BrokenCase(folder, spec.accession, case, code)])


def _edit_all(edit: Callable[[Dataset], None]) -> Callable[[WrittenSeries], int]:
    def apply(series: WrittenSeries) -> int:
        for path in series.paths:
            _rewrite(path, edit)
        return 0
    return apply


def _missing_rescale(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def drop_slope(ds: Dataset) -> None:
        del ds.RescaleSlope
    return _series_case(dicom_dir, spec, "series without RescaleSlope", "missing_rescale", _edit_all(drop_slope))


def _not_ct(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def to_mr(ds: Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.Modality, ds.ImageType = "MR", ["ORIGINAL", "PRIMARY", "M", "ND"]
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "KVP"):
            delattr(ds, keyword)
        ds.MagneticFieldStrength, ds.ScanningSequence, ds.SequenceVariant = "1.5", "SE", "NONE"
        ds.RepetitionTime, ds.EchoTime = "500", "15"
        ds.SeriesDescription = "T1 AX"
    return _series_case(dicom_dir, spec, "MR series", "not_ct", _edit_all(to_mr),
                        extra_tags={"StudyDescription": "MR THORAX"})


def _duplicate_slice(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    series = _valid(dicom_dir, spec)
    original = series.paths[len(series.paths) // 2]
    copy = original.with_name(f"{original.stem}_copy{original.suffix}")
    atomic_write_bytes(copy, original.read_bytes())
    case = BrokenCase(_relative(dicom_dir, copy), spec.accession, "byte-identical copy of a slice", "duplicate_slice")
    return BrokenStudy(spec, _relative(dicom_dir, series.folder), len(series.paths) + 1, [case])


def _missing_slice(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def drop_middle(series: WrittenSeries) -> int:
        series.paths[len(series.paths) // 2].unlink()
        return -1
    return _series_case(dicom_dir, spec, "middle slice missing", "missing_slice", drop_middle)


def _inconsistent_orientation(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def tilt_one(series: WrittenSeries) -> int:
        def tilt(ds: Dataset) -> None:  # a 10 degree gantry tilt on one slice only
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.984808", "-0.173648"]
        _rewrite(series.paths[len(series.paths) // 2], tilt)
        return 0
    return _series_case(dicom_dir, spec, "one slice with another orientation", "inconsistent_orientation", tilt_one)


def _undecodable(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def garbage_j2k(ds: Dataset) -> None:
        rng = np.random.default_rng([*spec.stream, 50, int(ds.InstanceNumber)])
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        codestream = b"\xff\x4f\xff\x51" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        ds.PixelData = encapsulate([codestream])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return _series_case(dicom_dir, spec, "JPEG 2000 series with garbage codestreams", "undecodable_transfer_syntax",
                        _edit_all(garbage_j2k))


def _unsafe_patient_id(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    return _series_case(dicom_dir, spec, "PatientID with path characters", "unsafe_patient_id")


def _unparseable_age(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    def bad_age(ds: Dataset) -> None:  # built directly: assigning an invalid AS would log a pydicom warning
        ds["PatientAge"] = DataElement(0x00101010, "AS", UNPARSEABLE_AGE, validation_mode=config.IGNORE)
    study = _series_case(dicom_dir, spec, "PatientAge that does not parse", "unparseable_age", _edit_all(bad_age))
    study.dicom_age_unparseable = True
    return study


def _empty_impression(dicom_dir: Path, spec: StudySpec) -> BrokenStudy:
    series = _valid(dicom_dir, spec)
    case = BrokenCase("", spec.accession, "report with an empty impression", "empty_impression")
    return BrokenStudy(spec, _relative(dicom_dir, series.folder), len(series.paths), [case], empty_impression=True)
