"""Series planning: every quarantine reason from a hand-made bad input, and the file accounting invariant."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_series_helpers import edit, input_file_count, known_hu, write_shuffled
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEGLossless, generate_uid

from generatect_kedro.dicom.series import QUARANTINE_COLUMNS, REASON_CODES, plan_series
from generatect_kedro.dicom.writer import SeriesGeometry, StorageEncoding, write_ct_series
from generatect_kedro.io.dicom_directory import DicomDirectoryDataset
from generatect_kedro.utils.identifiers import pseudonym

PARAMS = {"slice_count_range": [3, 100]}


def plan(root: Path, params: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    index = DicomDirectoryDataset(str(root)).load()
    result = plan_series(index.headers, params or PARAMS, slice_content=index.read_slice_hu)
    assert_accounting(root, *result)
    return result


def assert_accounting(root: Path, accepted: pd.DataFrame, quarantine: pd.DataFrame) -> None:
    """Every input file: in exactly one accepted series or counted by exactly one quarantine row."""
    assert list(quarantine.columns) == QUARANTINE_COLUMNS
    assert set(quarantine["reason_code"]) <= set(REASON_CODES)
    accepted_files = [f for files in accepted["files"] for f in files]
    assert len(accepted_files) == len(set(accepted_files))
    assert accepted["file_count"].sum() + quarantine["file_count"].sum() == input_file_count(root)
    file_rows = quarantine[quarantine["level"] == "file"]
    assert (file_rows["file_count"] == 1).all()
    assert not set(file_rows["item"]) & set(accepted_files)


def series(
    root: Path, name: str, slices: int = 6, geometry: SeriesGeometry | None = None, seed: int = 0, **tags
) -> list[Path]:
    geometry = geometry or SeriesGeometry((0.7, 0.7), 2.0, (0.0, 0.0, -50.0))
    tags.setdefault("PatientID", "PID-0042")
    return write_shuffled(known_hu(slices), root / name, geometry, StorageEncoding(0.5, -1024.0), tags,
                          seed=seed)


def only_code(quarantine: pd.DataFrame) -> str:
    assert len(quarantine) == 1, quarantine
    return quarantine["reason_code"].iloc[0]


def test_clean_series_sorted_by_position_not_name_or_instance_number(tmp_path):
    paths = series(tmp_path, "s")
    accepted, quarantine = plan(tmp_path)
    assert quarantine.empty and len(accepted) == 1
    row = accepted.iloc[0]
    z = [float(pydicom.dcmread(tmp_path / f).ImagePositionPatient[2]) for f in row["files"]]
    assert z == sorted(z) and row["slice_positions_mm"] == z
    assert sorted(row["files"]) != list(row["files"]) or len(paths) < 2  # names do not sort by position
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert row["volume_id"] == pseudonym(uid, "ser")
    assert row["patient_key"] == pseudonym("PID-0042", "pat")
    assert row["slice_step_mm"] == pytest.approx(2.0)


def test_two_series_in_one_folder_are_split_and_both_accepted(tmp_path):
    series(tmp_path, "mixed", slices=5)
    series(tmp_path, "mixed", slices=4, geometry=SeriesGeometry((0.5, 0.5), 1.0), seed=1)
    accepted, quarantine = plan(tmp_path)
    assert quarantine.empty
    assert sorted(accepted["file_count"]) == [4, 5]


def test_study_key_is_accession_pseudonym_with_study_uid_fallback(tmp_path):
    series(tmp_path, "a", AccessionNumber="00123")
    study_uid = generate_uid()
    series(tmp_path, "b", StudyInstanceUID=study_uid)
    accepted, _ = plan(tmp_path)
    assert set(accepted["study_key"]) == {pseudonym("00123", "study"), pseudonym(study_uid, "study")}


def test_identical_copy_is_dropped_and_series_kept(tmp_path):
    paths = series(tmp_path, "s")
    shutil.copy(paths[2], tmp_path / "s" / "copy_of_a_slice")
    accepted, quarantine = plan(tmp_path)
    assert len(accepted) == 1 and accepted.iloc[0]["file_count"] == 6
    assert only_code(quarantine) == "duplicate_slice"
    assert quarantine.iloc[0]["level"] == "file"
    assert quarantine.iloc[0]["item"] in {"s/copy_of_a_slice", f"s/{paths[2].name}"}


def test_conflicting_images_at_one_position_quarantine_the_series(tmp_path):
    paths = series(tmp_path, "s")
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(tmp_path / "s" / "other", enforce_file_format=True)
    accepted, quarantine = plan(tmp_path)
    assert accepted.empty and only_code(quarantine) == "duplicate_slice"
    assert quarantine.iloc[0]["level"] == "series" and quarantine.iloc[0]["file_count"] == 7


def test_missing_slice_names_the_gap(tmp_path):
    paths = series(tmp_path, "s", slices=8)
    z = {p: float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in paths}
    sorted(paths, key=z.get)[4].unlink()
    accepted, quarantine = plan(tmp_path)
    assert accepted.empty and only_code(quarantine) == "missing_slice"
    assert quarantine.iloc[0]["reason"].startswith("gap between slices 4 and 5: 4.0 mm where 2.0 mm is expected")


@pytest.mark.parametrize(
    ("code", "spoil"),
    [
        ("inconsistent_orientation", lambda p: edit(p, ImageOrientationPatient=[1, 0, 0, 0, 0.995, 0.0998])),
        ("inconsistent_geometry", lambda p: edit(p, PixelSpacing=[0.8, 0.8])),
    ],
)
def test_inconsistent_slice_in_series(tmp_path, code, spoil):
    paths = series(tmp_path, "s")
    spoil(paths[3])
    accepted, quarantine = plan(tmp_path)
    assert accepted.empty and only_code(quarantine) == code
    assert quarantine.iloc[0]["file_count"] == 6


def test_different_matrix_in_one_series(tmp_path):
    tags = {"SeriesInstanceUID": generate_uid(), "PatientID": "P"}
    geometry = SeriesGeometry((0.7, 0.7), 2.0)
    write_ct_series(known_hu(3), tmp_path / "s", geometry, tags=tags, file_names=lambda i: f"a{i}")
    upper = SeriesGeometry((0.7, 0.7), 2.0, tuple(geometry.position(3)))
    write_ct_series(known_hu(3, rows=6), tmp_path / "s", upper, tags=tags, file_names=lambda i: f"b{i}")
    accepted, quarantine = plan(tmp_path)
    assert only_code(quarantine) == "inconsistent_geometry" and "5x7, 6x7" in quarantine.iloc[0]["reason"]


def test_not_axial(tmp_path):
    coronal = SeriesGeometry((0.7, 0.7), 2.0, row_direction=(1, 0, 0), column_direction=(0, 0, -1))
    series(tmp_path, "s", geometry=coronal)
    assert only_code(plan(tmp_path)[1]) == "not_axial"


def test_slice_count_out_of_range(tmp_path):
    series(tmp_path, "s", slices=4)
    quarantine = plan(tmp_path, {"slice_count_range": [10, 20]})[1]
    assert only_code(quarantine) == "slice_count_out_of_range" and "4 slices" in quarantine.iloc[0]["reason"]


def test_localizer_image_type_and_single_slice(tmp_path):
    series(tmp_path, "scout", slices=2, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    series(tmp_path, "single", slices=1)
    quarantine = plan(tmp_path)[1]
    assert list(quarantine["reason_code"]) == ["localizer", "localizer"]
    assert sorted(quarantine["file_count"]) == [1, 2]


def test_not_ct_and_not_dicom(tmp_path):
    series(tmp_path, "mr", Modality="MR")
    (tmp_path / "notes.txt").write_text("export log\n")
    (tmp_path / "DICOMDIR_or_junk").write_bytes(np.random.default_rng(0).bytes(600))
    quarantine = plan(tmp_path)[1]
    assert sorted(quarantine["reason_code"]) == ["not_ct", "not_dicom", "not_dicom"]
    assert "modality is MR" in quarantine.set_index("reason_code").loc["not_ct", "reason"]


def test_truncated_file_is_a_file_level_row(tmp_path):
    paths = series(tmp_path, "s")
    data = paths[0].read_bytes()
    (tmp_path / "s" / "cut_short").write_bytes(data[:-40])
    accepted, quarantine = plan(tmp_path)
    assert len(accepted) == 1 and only_code(quarantine) == "truncated"
    assert quarantine.iloc[0]["item"] == "s/cut_short"


def test_no_pixel_data_and_missing_rescale(tmp_path):
    paths = series(tmp_path, "nopix")
    for path in paths:
        edit(path, PixelData=None)
    paths = series(tmp_path, "norescale")
    for path in paths:
        edit(path, RescaleSlope=None)
    quarantine = plan(tmp_path)[1].set_index("reason_code")
    assert quarantine.loc["no_pixel_data", "file_count"] == 6 and quarantine.loc["no_pixel_data", "level"] == "series"
    assert "RescaleSlope missing" in quarantine.loc["missing_rescale", "reason"]


def test_undecodable_transfer_syntax(tmp_path):
    paths = series(tmp_path, "s", slices=3)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLossless
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(32) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    quarantine = plan(tmp_path)[1]
    assert only_code(quarantine) == "undecodable_transfer_syntax"
    assert JPEGLossless in quarantine.iloc[0]["reason"]


def test_installed_decoder_that_fails_on_the_codestream(tmp_path):
    """JPEG 2000 has a decoder here (Pillow), yet garbage codestreams must still be caught at planning."""
    paths = series(tmp_path, "s", slices=3)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(40)])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    accepted, quarantine = plan(tmp_path)
    assert accepted.empty and only_code(quarantine) == "undecodable_transfer_syntax"
    assert quarantine.iloc[0]["level"] == "series" and quarantine.iloc[0]["file_count"] == 3
    assert "could not be decoded" in quarantine.iloc[0]["reason"]


def test_unsafe_patient_id_policy(tmp_path):
    series(tmp_path, "s", PatientID="../../etc/passwd")
    accepted, quarantine = plan(tmp_path)
    assert accepted.empty and only_code(quarantine) == "unsafe_patient_id"
    assert "passwd" not in quarantine.to_csv()
    accepted, quarantine = plan(tmp_path, {**PARAMS, "patient_id_policy": "pseudonymise"})
    assert quarantine.empty and accepted.iloc[0]["patient_key"] == pseudonym("../../etc/passwd", "pat")


def test_accounting_invariant_on_a_messy_export(tmp_path):
    """Everything at once: accepted + quarantined file counts equal the number of input files."""
    good = series(tmp_path, "good", slices=7)
    shutil.copy(good[0], tmp_path / "good" / "dup")
    (tmp_path / "good" / "cut").write_bytes(good[1].read_bytes()[:500])
    series(tmp_path, "mr", Modality="MR")
    gap = series(tmp_path, "gap", slices=6)
    gap[3].unlink()
    series(tmp_path, "scout", slices=1)
    series(tmp_path, "small", slices=2)
    (tmp_path / "readme").write_text("hello")
    accepted, quarantine = plan(tmp_path)  # asserts the invariant
    assert list(accepted["file_count"]) == [7]
    assert accepted["file_count"].sum() + quarantine["file_count"].sum() == 7 + 2 + 6 + 5 + 1 + 2 + 1


def test_patient_id_kept_in_memory_only(tmp_path):
    series(tmp_path, "s", PatientID="SECRET-ID-77", PatientName="DOE^JANE")
    accepted, quarantine = plan(tmp_path)
    text = accepted.to_csv() + quarantine.to_csv()
    assert "SECRET-ID-77" not in text and "DOE" not in text
