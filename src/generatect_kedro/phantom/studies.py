"""Patients and studies of the phantom cohort: who they are, how their scanner stored them, and writing them.

Everything is drawn from random streams keyed by (seed, patient index, study index), so the same arguments
always give the same files, and a study's bytes do not depend on the patients that come after it (a larger
cohort, or one with broken cases, starts with the same studies).
What real exports vary is varied on purpose (spacing, slice count, slope/intercept and storage type,
manufacturer, file naming and nesting, on-disk order, head-first numbering); the storage profile,
manufacturer and naming scheme cycle with the study's position so that even a small cohort covers them all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from generatect_kedro.dicom.writer import (
    SeriesGeometry,
    StorageEncoding,
    derived_uid,
    sop_instance_uid,
    write_ct_series,
)
from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.abnormalities import Finding, render_chest, sample_findings
from generatect_kedro.phantom.anatomy import ChestAnatomy, sample_anatomy

STORAGE_PROFILES: tuple[StorageEncoding, ...] = (
    StorageEncoding(slope=1.0, intercept=-1024.0, unsigned=True, bits_stored=12),
    StorageEncoding(slope=1.0, intercept=-1024.0, unsigned=False, bits_stored=16),
    StorageEncoding(slope=1.0, intercept=0.0, unsigned=False, bits_stored=16),
    StorageEncoding(slope=0.5, intercept=-1024.0, unsigned=True, bits_stored=16),
)
MODELS = {"SIEMENS": "SOMATOM Definition AS", "GE MEDICAL SYSTEMS": "Revolution CT", "Philips": "Brilliance 64",
          "TOSHIBA": "Aquilion ONE", "PNMS": "NeuViz 64 En"}
# Relative weights of the labels when a study is abnormal: the clearly visible ones are the commonest.
DEFAULT_LABEL_WEIGHTS = {
    "Medical material": 1.0, "Arterial wall calcification": 2.0, "Cardiomegaly": 3.0, "Pericardial effusion": 1.5,
    "Coronary artery wall calcification": 1.5, "Hiatal hernia": 1.5, "Lymphadenopathy": 1.5, "Emphysema": 2.0,
    "Atelectasis": 2.0, "Lung nodule": 3.0, "Lung opacity": 2.0, "Pulmonary fibrotic sequela": 1.5,
    "Pleural effusion": 3.0, "Mosaic attenuation pattern": 1.0, "Peribronchial thickening": 1.0,
    "Consolidation": 2.0, "Bronchiectasis": 1.0, "Interlobular septal thickening": 1.0,
}
_FIRST_NAMES = {"M": ("JOHN", "MEHMET", "CARLOS", "PETER", "ALI", "MARCO", "HANS", "KENJI"),
                "F": ("MARY", "AYSE", "ANNA", "ELIF", "SARAH", "ZEYNEP", "EMMA", "YUKI")}
_LAST_NAMES = ("DOE", "ROE", "YILMAZ", "KAYA", "MULLER", "GARCIA", "ROSSI", "JANSEN", "NOVAK", "TANAKA")
_STUDY_DESCRIPTIONS = {False: ("CT CHEST WITHOUT CONTRAST", "Thorax^Routine (Adult)", "CHEST NON-CON"),
                       True: ("CT CHEST WITH CONTRAST", "Thorax^Contrast (Adult)", "CHEST W/ CONTRAST")}
NAMING_SCHEMES = ("IM", "number", "uid", "random")
NESTINGS = ("patient/study/series", "flat")


@dataclass(frozen=True)
class PhantomCohortConfig:
    """Every knob of the demo cohort; the defaults are tiny, for CPU demos."""

    matrix_choices: tuple[int, ...] = (64,)
    fov_mm_range: tuple[float, float] = (320.0, 400.0)
    slice_spacing_choices: tuple[float, ...] = (4.0, 5.0, 6.0, 8.0)
    coverage_mm_range: tuple[float, float] = (280.0, 330.0)  # cranio-caudal extent, apex to upper abdomen
    slice_count_range: tuple[int, int] = (36, 72)
    follow_up_fraction: float = 0.35
    normal_fraction: float = 0.25
    max_findings: int = 4
    age_range: tuple[int, int] = (25, 90)
    label_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LABEL_WEIGHTS))
    manufacturers: tuple[str, ...] = tuple(MODELS)
    storage_profiles: tuple[StorageEncoding, ...] = STORAGE_PROFILES
    naming_schemes: tuple[str, ...] = NAMING_SCHEMES
    nestings: tuple[str, ...] = NESTINGS


@dataclass(frozen=True)
class PatientSpec:
    index: int
    patient_id: str
    name: str
    sex: str
    age: int  # at the first study
    anatomy: ChestAnatomy


@dataclass(frozen=True)
class StudySpec:
    """Everything needed to write one study's CT series and its report."""

    patient: PatientSpec
    index: int  # 0 = baseline, 1 = follow-up
    accession: str
    study_date: dt.date
    age: int
    findings: tuple[Finding, ...]
    shape: tuple[int, int, int]  # (slices, rows, columns)
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    encoding: StorageEncoding
    manufacturer: str
    naming: str
    nesting: str
    head_first: bool  # InstanceNumber 1 is the most superior slice
    shuffled_names: bool  # file-name numbers do not follow InstanceNumber
    contrast: bool
    table_z: float
    study_description: str
    stream: tuple[int, ...]  # (seed words…, patient index, study index): keys every random draw and UID

    @property
    def uid_entropy(self) -> tuple:
        return ("generatect-phantom", *self.stream)

    @property
    def labels(self) -> set[str]:
        return {finding.label for finding in self.findings}

    @property
    def study_folder(self) -> str:
        if self.nesting == "flat":
            return f"EXAM_{self.accession}"
        return f"PA{self.patient.index:06d}/ST{self.index:06d}"

    def series_folder(self, series_number: int = 2) -> str:
        """Relative to dicom/: flat exports put every file of the study in one folder."""
        return self.study_folder if self.nesting == "flat" else f"{self.study_folder}/SE{series_number:06d}"


@dataclass
class WrittenSeries:
    folder: Path  # absolute
    paths: list[Path]
    series_uid: str
    hu: np.ndarray  # what was rendered, (D, H, W) display order = slice index order


def seed_words(seed: int) -> list[int]:
    """SeedSequence entropy from any Python int (negative seeds included)."""
    return [abs(int(seed)) % 2**63, int(seed < 0)]


def sample_patient(seed: int, index: int, config: PhantomCohortConfig, taken_ids: set[str]) -> PatientSpec:
    rng = np.random.default_rng([*seed_words(seed), index, 0])
    sex = str(rng.choice(["M", "F"]))
    patient_id = _unique(lambda: f"{int(rng.integers(10**7, 10**8))}", taken_ids)
    name = f"{rng.choice(_LAST_NAMES)}^{rng.choice(_FIRST_NAMES[sex])}"
    age = int(rng.integers(config.age_range[0], config.age_range[1] + 1))
    return PatientSpec(index, patient_id, name, sex, age, sample_anatomy(rng))


def sample_studies(seed: int, patient: PatientSpec, config: PhantomCohortConfig, first_position: int,
                   taken_accessions: set[str], follow_up: bool | None = None) -> list[StudySpec]:
    """The baseline study and, for about `follow_up_fraction` of patients, a follow-up with other findings."""
    rng = np.random.default_rng([*seed_words(seed), patient.index, 1])
    if follow_up is None:
        follow_up = bool(rng.random() < config.follow_up_fraction)
    baseline_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
    studies: list[StudySpec] = []
    for study_index in range(2 if follow_up else 1):
        date = baseline_date + dt.timedelta(days=0 if study_index == 0 else int(rng.integers(60, 500)))
        labels = _sample_labels(rng, config)
        for _ in range(50):  # a follow-up shows a change; a config that allows none gets no follow-up
            if not studies or labels != studies[0].labels:
                break
            labels = _sample_labels(rng, config)
        else:
            break
        studies.append(_study(seed, patient, study_index, first_position + study_index, date, baseline_date,
                              labels, config, taken_accessions))
    return studies


def _sample_labels(rng: np.random.Generator, config: PhantomCohortConfig) -> set[str]:
    if rng.random() < config.normal_fraction:
        return set()
    labels = [label for label in CT_RATE_LABELS if config.label_weights.get(label, 0) > 0]
    weights = np.array([config.label_weights[label] for label in labels], dtype=float)
    count = int(rng.integers(1, min(config.max_findings, len(labels)) + 1))
    return set(rng.choice(labels, size=count, replace=False, p=weights / weights.sum()).tolist())


def _study(seed, patient, study_index, position, date, baseline_date, labels, config, taken_accessions) -> StudySpec:
    """One study's scanner and export choices; `position` (the study's rank in the cohort) cycles the
    storage profile, manufacturer, naming and nesting so every variant appears."""
    rng = np.random.default_rng([*seed_words(seed), patient.index, 2 + study_index])
    matrix = int(rng.choice(config.matrix_choices))
    pixel_spacing = round(float(rng.uniform(*config.fov_mm_range)) / matrix, 6)
    slice_spacing = float(rng.choice(config.slice_spacing_choices))
    slices = int(np.clip(round(rng.uniform(*config.coverage_mm_range) / slice_spacing), *config.slice_count_range))
    ordered = [label for label in CT_RATE_LABELS if label in labels]  # set order must not leak into the rng
    contrast = bool(rng.random() < 0.4)
    return StudySpec(
        patient=patient, index=study_index, accession=_unique(lambda: f"{int(rng.integers(10**9, 10**10))}",
                                                             taken_accessions),
        study_date=date, age=patient.age + (date - baseline_date).days // 365,
        findings=sample_findings(ordered, rng), shape=(slices, matrix, matrix), pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing, slice_thickness=slice_spacing * (1.25 if position % 5 == 3 else 1.0),
        encoding=config.storage_profiles[position % len(config.storage_profiles)],
        manufacturer=config.manufacturers[position % len(config.manufacturers)],
        naming=config.naming_schemes[position % len(config.naming_schemes)],
        nesting=config.nestings[(position // 2) % len(config.nestings)],
        head_first=position % 3 == 1, shuffled_names=position % 4 == 2, contrast=contrast,
        table_z=-float(rng.integers(100, 700)), study_description=str(rng.choice(_STUDY_DESCRIPTIONS[contrast])),
        stream=(*seed_words(seed), patient.index, study_index),
    )


def _unique(draw, taken: set[str]) -> str:
    value = draw()
    while value in taken:
        value = draw()
    taken.add(value)
    return value


def render_study(spec: StudySpec) -> np.ndarray:
    rng = np.random.default_rng([*spec.stream, 10])
    anatomy = replace(spec.patient.anatomy, contrast=spec.contrast)
    spacing = (spec.slice_spacing, spec.pixel_spacing, spec.pixel_spacing)
    return render_chest(spec.shape, spacing, spec.findings, rng, anatomy=anatomy)


def report_rng(spec: StudySpec) -> np.random.Generator:
    return np.random.default_rng([*spec.stream, 20])


def study_tags(spec: StudySpec) -> dict[str, object]:
    """Patient- and study-level header elements shared by every series of the study."""
    return {
        "PatientID": spec.patient.patient_id, "PatientName": spec.patient.name, "PatientSex": spec.patient.sex,
        "PatientAge": f"{spec.age:03d}Y",
        "StudyInstanceUID": derived_uid(*spec.uid_entropy, "StudyInstanceUID"),
        "FrameOfReferenceUID": derived_uid(*spec.uid_entropy, "FrameOfReferenceUID"),
        "AccessionNumber": spec.accession, "StudyID": str(1 + spec.index),
        "StudyDate": spec.study_date.strftime("%Y%m%d"), "SeriesDate": spec.study_date.strftime("%Y%m%d"),
        "ContentDate": spec.study_date.strftime("%Y%m%d"), "StudyDescription": spec.study_description,
        "Manufacturer": spec.manufacturer, "ManufacturerModelName": MODELS.get(spec.manufacturer, ""),
        "BodyPartExamined": "CHEST", "PatientPosition": "HFS" if spec.head_first else "FFS",
        "ContrastBolusAgent": "IOHEXOL" if spec.contrast else None,
    }


def series_geometry(spec: StudySpec, slices: int | None = None) -> SeriesGeometry:
    slices = slices or spec.shape[0]
    rows, cols = spec.shape[1:]
    return SeriesGeometry(
        pixel_spacing=(spec.pixel_spacing, spec.pixel_spacing), slice_spacing=spec.slice_spacing,
        origin_lps=(-(cols - 1) / 2 * spec.pixel_spacing, -(rows - 1) / 2 * spec.pixel_spacing,
                    spec.table_z - (slices - 1) / 2 * spec.slice_spacing),
        slice_thickness=spec.slice_thickness,
    )


def file_names(spec: StudySpec, series_number: int, slices: int, offset: int = 0) -> list[str]:
    """Names of the slice files by slice index, in the study's naming scheme."""
    rng = np.random.default_rng([*spec.stream, 30, series_number])
    numbers = np.array(instance_numbers(spec, slices)) + offset
    if spec.shuffled_names:
        numbers = rng.permutation(numbers)
    entropy = (*spec.uid_entropy, series_number)
    if spec.naming == "IM":
        return [f"IM{n:05d}.dcm" for n in numbers]
    if spec.naming == "number":
        return [str(n) for n in numbers]
    if spec.naming == "uid":
        return [f"{sop_instance_uid(entropy, index)}.dcm" for index in range(slices)]
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    names: set[str] = set()
    return [_unique(lambda: "".join(rng.choice(alphabet, size=8)), names) for _ in range(slices)]


def instance_numbers(spec: StudySpec, slices: int) -> list[int]:
    return list(range(slices, 0, -1)) if spec.head_first else list(range(1, slices + 1))


def write_series(dicom_dir: Path, spec: StudySpec, hu: np.ndarray, *, series_number: int = 2,
                 folder: str | None = None, extra_tags: Mapping[str, object] | None = None,
                 name_offset: int = 0) -> WrittenSeries:
    """Write one axial CT series of the study (HU in display order) where the study's nesting puts it."""
    slices = hu.shape[0]
    folder = folder or spec.series_folder(series_number)
    thickness = spec.slice_thickness
    tags = {**study_tags(spec), "SeriesNumber": series_number,
            "SeriesDescription": f"AXIAL {thickness:g}mm" if series_number == 2 else f"Series {series_number}",
            **dict(extra_tags or {})}
    entropy = (*spec.uid_entropy, series_number)
    tags["SeriesInstanceUID"] = derived_uid(*entropy, "SeriesInstanceUID")
    target = dicom_dir / folder
    paths = write_ct_series(hu, target, series_geometry(spec, slices), spec.encoding, tags,
                            file_names=file_names(spec, series_number, slices, name_offset),
                            uid_entropy=entropy, instance_numbers=instance_numbers(spec, slices))
    return WrittenSeries(target, paths, str(tags["SeriesInstanceUID"]), hu)
