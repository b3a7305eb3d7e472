"""Synthetic DICOM output: valid CT Image Storage (dciodvfy), read back by our own ingestion to the same HU
volume and affine, fresh UIDs, and unmistakably synthetic with its lineage in the header."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from project_config import parameters

from generatect_kedro.dicom.synthetic import (
    PRIVATE_CREATOR,
    SYNTHETIC_PATIENT_NAME,
    read_lineage_record,
    series_geometry_from_affine,
    write_synthetic_series,
)
from generatect_kedro.io.dicom_directory import DicomDirectoryDataset
from generatect_kedro.pipelines.ingestion.nodes import convert_dicom_series, plan_dicom_series
from generatect_kedro.volume import HUVolume, affine_from_spacing, canonical

RECORD = {"schema": "generatect-lineage/1",
          "item": {"item_id": "row3-2", "row": 3, "index_in_row": 2, "prompt": "Émphysème, no effusion", "seed": 9,
                   "slice_count": 12},
          "models": {"ctvit": {"name": "generatect-ctvit", "version": "4"},
                     "transformer": {"name": "generatect-transformer", "version": "2"},
                     "superres": {"name": "generatect-superres", "version": "7"}},
          "code": {"package_version": "0.1.0", "git_commit": "feedfacecafebeef0000", "git_dirty": True},
          "created_utc": "2026-03-04T05:06:07+00:00"}


def _oblique() -> np.ndarray:
    """30° about the head-feet axis, rows flipped and anisotropic: far from the identity."""
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, -0.9, 2.5])
    affine[:3, 3] = (12.5, -40.25, 310.0)
    return affine


GEOMETRIES = {
    "anisotropic": affine_from_spacing((0.6, 0.8, 3.0), (-5.0, 20.0, -300.0)),
    "oblique": _oblique(),
}


@pytest.fixture(params=sorted(GEOMETRIES))
def written(request, tmp_path):
    rng = np.random.default_rng(len(request.param))
    data = rng.integers(-1000, 1001, size=(14, 10, 12)).astype(np.int16)  # ingestion needs >= 10 slices
    volume = HUVolume(data, GEOMETRIES[request.param])
    info = write_synthetic_series(volume, tmp_path / "series", RECORD)
    return volume, info, tmp_path / "series"


def _dciodvfy() -> str:
    path = shutil.which("dciodvfy") or ("/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").is_file() else None)
    if path is None:
        if os.environ.get("GENERATECT_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dciodvfy (dicom3tools) is required (GENERATECT_REQUIRE_DCIODVFY=1) but not installed")
        pytest.skip("dciodvfy (dicom3tools) is not installed; set GENERATECT_REQUIRE_DCIODVFY=1 to make this fail")
    return path


def test_dciodvfy_reports_no_errors(written):
    binary = _dciodvfy()
    _, info, _ = written
    for path in (info["files"][0], info["files"][-1]):
        result = subprocess.run([binary, path], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if "Error" in line]
        assert not errors, f"dciodvfy errors in {path}:\n{report}"
        assert "CTImage" in report  # it recognised the IOD it checked


def test_ingestion_reads_back_the_same_volume(written):
    volume, info, folder = written
    params = parameters("ingestion")
    index = DicomDirectoryDataset(str(folder), progress=False).load()
    plan, quarantine = plan_dicom_series(index, params)
    assert len(quarantine) == 0, quarantine.to_dict("records")
    assert len(plan) == 1 and plan["file_count"].iloc[0] == len(info["files"])
    converters = convert_dicom_series(index, plan, params)
    (read_back,) = (convert() for convert in converters.values())
    expected = canonical(volume)  # ingestion stores canonical RAS+; the voxels are the same, only reoriented
    np.testing.assert_array_equal(read_back.data, expected.data)
    np.testing.assert_allclose(read_back.affine, expected.affine, rtol=0, atol=1e-4)


def test_header_is_synthetic_and_carries_lineage(written):
    _, info, _ = written
    ds = pydicom.dcmread(info["files"][0])
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SeriesDescription.startswith("SYNTHETIC GenerateCT")
    assert str(ds.PatientName) == SYNTHETIC_PATIENT_NAME and ds.PatientID == "row3-2"
    assert ds.BurnedInAnnotation == "NO" and "Synthetic" in ds.DerivationDescription
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.PixelRepresentation) == (1.0, -1024.0, 1)
    comments = str(ds.ImageComments)
    for fragment in ("SYNTHETIC", "seed=9", "generatect-transformer v2", "generatect-superres v7", "feedfacecafe",
                     "(dirty)"):
        assert fragment in comments
    assert ds.private_block(0x0011, PRIVATE_CREATOR) is not None
    assert read_lineage_record(info["files"][-1]) == RECORD  # the full record, non-ASCII prompt included


def test_geometry_in_lps_matches_the_ras_affine(written):
    """Slice 0's header puts voxel (0, 0) where the RAS+ affine (x, y negated) says it is."""
    volume, info, _ = written
    ds = pydicom.dcmread(info["files"][0], stop_before_pixels=True)
    ras = canonical(volume)
    i_max, j_max = ras.shape[0] - 1, ras.shape[1] - 1
    # written in radiological order: DICOM (column 0, row 0) of the lowest slice is canonical voxel (I-1, J-1, 0)
    corner_ras = ras.affine @ np.array([i_max, j_max, 0, 1.0])
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               [-corner_ras[0], -corner_ras[1], corner_ras[2]], atol=1e-4)
    spacing = sorted(np.round(volume.spacing, 4))
    header = sorted([*map(float, ds.PixelSpacing), float(ds.SpacingBetweenSlices)])
    np.testing.assert_allclose(header, spacing, atol=1e-4)
    assert float(ds.SliceThickness) == pytest.approx(float(ds.SpacingBetweenSlices))


def test_uids_are_fresh_per_call(tmp_path):
    volume = HUVolume(np.zeros((4, 4, 3), np.int16), np.eye(4))
    first = write_synthetic_series(volume, tmp_path / "a", RECORD)
    second = write_synthetic_series(volume, tmp_path / "b", RECORD)
    uids = []
    for info in (first, second):
        ds = pydicom.dcmread(info["files"][0], stop_before_pixels=True)
        uids.append({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID})
        assert len(uids[-1]) == 4
    assert not uids[0] & uids[1]
    sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in first["files"]}
    assert len(sops) == len(first["files"])


def test_sheared_affine_is_refused():
    affine = np.eye(4)
    affine[0, 2] = 0.5  # slices not perpendicular to the image plane
    with pytest.raises(ValueError, match="sheared"):
        series_geometry_from_affine(affine)


def test_left_handed_affine_writes_slices_along_the_normal(tmp_path):
    """A volume whose slice axis points against row × column is still read back in the right place."""
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # RAS with k running superior → inferior
    volume = HUVolume(np.arange(4 * 5 * 11, dtype=np.int16).reshape(4, 5, 11) - 200, affine)
    info = write_synthetic_series(volume, tmp_path, RECORD)
    from generatect_kedro.dicom.hu import volume_from_files

    back = volume_from_files(info["files"], hu_window=(-32768, 32767))
    np.testing.assert_array_equal(back.data, canonical(volume).data)
    np.testing.assert_allclose(back.affine, canonical(volume).affine, atol=1e-4)
