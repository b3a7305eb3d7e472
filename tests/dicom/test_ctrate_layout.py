"""CT-RATE layout: HU applied exactly once, the affine from the metadata, quarantine of bad volumes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dicom_series_helpers import known_hu
from kedro_datasets.partitions import PartitionedDataset

from generatect_kedro.dicom.ctrate import ctrate_reports, ctrate_to_volume, parse_volume_name, plan_ctrate
from generatect_kedro.dicom.hu import dicom_affine_ras
from generatect_kedro.utils.identifiers import pseudonym

PARAMS = {"hu_window": [-1024, 3071], "slice_count_range": [2, 1000]}
HU = known_hu(slices=6, rows=5, columns=7)  # (slice, row, column)


def as_ijk(slices_rows_columns: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(slices_rows_columns.transpose(2, 1, 0))  # i = column, j = row, k = slice


def meta_row(name: str, **overrides) -> dict:
    row = {"VolumeName": name, "Manufacturer": "SIEMENS", "RescaleSlope": 1.0, "RescaleIntercept": -1024.0,
           "XYSpacing": "[0.75, 0.75]", "ZSpacing": 1.5, "PatientSex": "M", "PatientAge": "058Y"}
    row.update(overrides)
    return row


def save(root, name: str, data: np.ndarray, affine=np.eye(4), slope=None, inter=None) -> None:
    patient, study, _ = parse_volume_name(name)
    folder = root / patient / study
    folder.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, folder / name)


def load_plan(root, rows, params=PARAMS):
    volumes = PartitionedDataset(path=str(root), dataset="generatect_kedro.io.nifti_volume.NiftiImageDataset",
                                 filename_suffix=".nii.gz").load()
    plan, quarantine = plan_ctrate(volumes, pd.DataFrame(rows), params)
    return volumes, plan, quarantine


def convert(root, name, rows, params=PARAMS):
    volumes, plan, quarantine = load_plan(root, rows, params)
    row = plan.set_index("source_name").loc[name].to_dict()
    row["volume_id"] = pseudonym(name[:-7], "ser")
    return ctrate_to_volume(volumes[row["partition"]](), row, params)


def expected_assumed(hu: np.ndarray) -> np.ndarray:
    return as_ijk(hu)[::-1, ::-1, :]  # assumed LPS axial: canonical flips i (L→R) and j (P→A)


def test_raw_storage_gets_metadata_rescale_once(tmp_path):
    save(tmp_path, "train_1_a_1.nii.gz", as_ijk(HU + 1024).astype(np.uint16))
    volume = convert(tmp_path, "train_1_a_1.nii.gz", [meta_row("train_1_a_1.nii.gz")])
    np.testing.assert_array_equal(volume.data, expected_assumed(HU))
    np.testing.assert_allclose(volume.spacing, (0.75, 0.75, 1.5))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    assert volume.meta["rescale_applied"] and volume.meta["geometry_source"] == "assumed"


def test_data_already_in_hu_is_not_rescaled_again(tmp_path):
    save(tmp_path, "train_2_a_1.nii.gz", as_ijk(HU).astype(np.int16))
    volume = convert(tmp_path, "train_2_a_1.nii.gz", [meta_row("train_2_a_1.nii.gz")])
    np.testing.assert_array_equal(volume.data, expected_assumed(HU))
    assert not volume.meta["rescale_applied"]


def test_header_scaling_is_applied_by_nibabel_and_not_repeated(tmp_path):
    save(tmp_path, "train_3_a_1.nii.gz", as_ijk(HU + 1024).astype(np.int16), slope=1.0, inter=-1024.0)
    volume = convert(tmp_path, "train_3_a_1.nii.gz", [meta_row("train_3_a_1.nii.gz")])
    np.testing.assert_array_equal(volume.data, expected_assumed(HU))
    assert volume.meta["header_scaled"] and not volume.meta["rescale_applied"]


def test_already_hu_override(tmp_path):
    save(tmp_path, "train_4_a_1.nii.gz", as_ijk(HU).astype(np.int16))
    rows = [meta_row("train_4_a_1.nii.gz")]
    forced = convert(tmp_path, "train_4_a_1.nii.gz", rows, {**PARAMS, "ctrate": {"already_hu": "false"}})
    np.testing.assert_array_equal(forced.data, np.clip(expected_assumed(HU) - 1024, -1024, 3071))
    with pytest.raises(ValueError):
        convert(tmp_path, "train_4_a_1.nii.gz", rows, {**PARAMS, "ctrate": {"already_hu": "maybe"}})


def test_geometry_from_metadata_ipp_iop_and_from_a_fixed_header(tmp_path):
    rows = [
        meta_row("train_5_a_1.nii.gz", ImagePositionPatient="[-100.0, -80.0, -250.0]",
                 ImageOrientationPatient="[1, 0, 0, 0, 1, 0]"),
        meta_row("train_5_a_2.nii.gz"),
    ]
    affine = dicom_affine_ras((-100.0, -80.0, -250.0), (1, 0, 0, 0, 1, 0), (0.75, 0.75), 1.5)
    save(tmp_path, "train_5_a_1.nii.gz", as_ijk(HU).astype(np.int16))
    save(tmp_path, "train_5_a_2.nii.gz", as_ijk(HU).astype(np.int16), affine=affine)
    from_metadata = convert(tmp_path, "train_5_a_1.nii.gz", rows)
    from_header = convert(tmp_path, "train_5_a_2.nii.gz", rows)
    assert from_metadata.meta["geometry_source"] == "metadata" and from_header.meta["geometry_source"] == "header"
    for volume in (from_metadata, from_header):
        np.testing.assert_array_equal(volume.data, expected_assumed(HU))
        # voxel (0,0,0) = last column, last row of the lowest slice
        np.testing.assert_allclose(volume.affine[:3, 3], (100.0 - 6 * 0.75, 80.0 - 4 * 0.75, -250.0), atol=1e-4)


def test_reverse_slices_for_listed_manufacturer_when_orientation_is_assumed(tmp_path):
    save(tmp_path, "train_6_a_1.nii.gz", as_ijk(HU).astype(np.int16))
    volume = convert(tmp_path, "train_6_a_1.nii.gz", [meta_row("train_6_a_1.nii.gz", Manufacturer="PNMS")])
    np.testing.assert_array_equal(volume.data, expected_assumed(HU)[:, :, ::-1])
    assert volume.meta["slices_reversed"]


def test_quarantine_and_plan_columns(tmp_path):
    good = as_ijk(HU).astype(np.int16)
    save(tmp_path, "valid_1_a_1.nii.gz", good)
    save(tmp_path, "valid_1_a_2.nii.gz", good)  # not in the metadata
    save(tmp_path, "valid_2_a_1.nii.gz", good)  # implausible spacing
    broken = tmp_path / "valid_3" / "valid_3_a"
    broken.mkdir(parents=True)
    (broken / "valid_3_a_1.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    rows = [meta_row("valid_1_a_1.nii.gz"), meta_row("valid_2_a_1.nii.gz", XYSpacing="[0.01, 0.01]"),
            meta_row("valid_3_a_1.nii.gz")]
    volumes, plan, quarantine = load_plan(tmp_path, rows)
    assert len(plan) + quarantine["file_count"].sum() == len(volumes) == 4
    codes = dict(zip(quarantine["item"], quarantine["reason_code"], strict=True))
    assert codes == {"valid_1/valid_1_a/valid_1_a_2.nii.gz": "missing_metadata",
                     "valid_2/valid_2_a/valid_2_a_1.nii.gz": "implausible_spacing",
                     "valid_3/valid_3_a/valid_3_a_1.nii.gz": "unreadable_volume"}
    row = plan.iloc[0]
    assert row["patient_key"] == pseudonym("valid_1", "pat") and row["study_key"] == pseudonym("valid_1_a", "study")
    assert (row["source"], row["slice_count"], row["patient_age"]) == ("ctrate", 6, "058Y")


def test_reports_keyed_by_study():
    reports = pd.DataFrame({"VolumeName": ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz"],
                            "Findings_EN": ["f1", "f1", "f2"], "Impressions_EN": ["i1", "i1", "i2"]})
    out = ctrate_reports(reports, {})
    assert list(out.columns) == ["study_key", "findings", "impression"]
    assert list(out["study_key"]) == [pseudonym("train_1_a", "study"), pseudonym("train_2_b", "study")]


def test_volume_name_parsing():
    assert parse_volume_name("train_12_b_3.nii.gz") == ("train_12", "train_12_b", "3")
    with pytest.raises(ValueError):
        parse_volume_name("scan.nii.gz")
