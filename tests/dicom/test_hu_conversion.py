"""HU values and geometry of converted DICOM series, checked against what the writer put where."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_series_helpers import known_hu, write_shuffled
from pydicom.data import get_testdata_file

from generatect_kedro.dicom.hu import dicom_affine_ras, volume_from_datasets, volume_from_files
from generatect_kedro.dicom.writer import SeriesGeometry, StorageEncoding, write_ct_series
from generatect_kedro.io.dicom_directory import DicomDirectoryDataset
from generatect_kedro.io.nifti_volume import NiftiVolumeDataset

WIDE = (-1024.0, 3071.0)


def expected_volume(volume, hu: np.ndarray, geometry: SeriesGeometry, window=WIDE) -> np.ndarray:
    """HU the written series holds at each stored voxel's RAS position, found by inverting the writer's geometry."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    ras = volume.affine @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    lps = ras[:3] * np.array([[-1.0], [-1.0], [1.0]])
    basis = np.column_stack([
        np.asarray(geometry.row_direction) * geometry.pixel_spacing[1],
        np.asarray(geometry.column_direction) * geometry.pixel_spacing[0],
        geometry.normal * geometry.slice_spacing,
    ])
    column_row_slice = np.linalg.solve(basis, lps - np.asarray(geometry.origin_lps)[:, None])
    rounded = np.rint(column_row_slice).astype(int)
    np.testing.assert_allclose(column_row_slice, rounded, atol=2e-3)  # every voxel centre is a written pixel
    c, r, s = rounded
    return np.clip(hu[s, r, c], *window).reshape(volume.shape)


def convert_folder(folder, window=WIDE):
    index = DicomDirectoryDataset(str(folder)).load()
    return index.read_volume(list(index.headers["path"]), window)


@pytest.mark.parametrize(
    "encoding",
    [
        StorageEncoding(slope=0.5, intercept=-1024.0, unsigned=True, bits_stored=12),
        StorageEncoding(slope=1.0, intercept=-1024.0, unsigned=True, bits_stored=12),
        StorageEncoding(slope=1.0, intercept=0.0, unsigned=False, bits_stored=16),
        StorageEncoding(slope=0.5, intercept=-1000.0, unsigned=False, bits_stored=16),
    ],
    ids=["slope0.5-unsigned", "unsigned-1024", "signed", "slope0.5-signed"],
)
def test_known_hu_and_geometry_for_each_storage_encoding(tmp_path, axial, encoding):
    hu = known_hu()
    write_shuffled(hu, tmp_path, axial, encoding, seed=3)
    volume = convert_folder(tmp_path)
    assert volume.data.dtype == np.int16
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_allclose(volume.spacing, (0.8, 0.7, 2.5), atol=1e-6)
    np.testing.assert_array_equal(volume.data, expected_volume(volume, hu, axial))
    # identity orientation: voxel (0,0,0) is the last column and last row of the lowest slice, in RAS
    np.testing.assert_allclose(volume.affine[:3, 3], (120.0 - 6 * 0.8, 90.0 - 4 * 0.7, -300.0), atol=1e-6)
    assert volume.data[6 - 2, 4 - 1, 3] == hu[3, 1, 2]  # slice 3, row 1, column 2 after the L/R and A/P flips


def test_head_first_descending_positions(tmp_path):
    geometry = SeriesGeometry((0.6, 0.6), slice_spacing=-1.25, origin_lps=(0.0, 0.0, 50.0), slice_thickness=1.25)
    hu = known_hu(slices=8)
    write_shuffled(hu, tmp_path, geometry, StorageEncoding(0.5, -1024.0), seed=5)
    volume = convert_folder(tmp_path)
    np.testing.assert_array_equal(volume.data, expected_volume(volume, hu, geometry))
    np.testing.assert_allclose(volume.spacing, (0.6, 0.6, 1.25), atol=1e-6)
    assert volume.affine[2, 3] == pytest.approx(50.0 - 7 * 1.25)  # k = 0 is the most inferior slice
    assert volume.data[6, 4, 7] == hu[0, 0, 0]  # the first written slice is the top one


@pytest.mark.parametrize("degrees", [90.0, 30.0])
def test_non_identity_in_plane_orientation(tmp_path, degrees):
    a = math.radians(degrees)
    geometry = SeriesGeometry(
        (0.7, 0.9), slice_spacing=3.0, origin_lps=(10.0, -20.0, 5.0),
        row_direction=(math.cos(a), math.sin(a), 0.0), column_direction=(-math.sin(a), math.cos(a), 0.0),
    )
    hu = known_hu()
    write_shuffled(hu, tmp_path, geometry, StorageEncoding(0.5, -1024.0), seed=7)
    volume = convert_folder(tmp_path)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(volume.data, expected_volume(volume, hu, geometry))


def test_each_slice_uses_its_own_slope_and_intercept(tmp_path, axial):
    hu = known_hu(slices=6)
    tags = {"SeriesInstanceUID": pydicom.uid.generate_uid(), "StudyInstanceUID": pydicom.uid.generate_uid()}
    write_ct_series(hu[:3], tmp_path, axial, StorageEncoding(0.5, -1024.0), tags, file_names=lambda i: f"a{i}")
    upper = SeriesGeometry(axial.pixel_spacing, axial.slice_spacing, tuple(axial.position(3)))
    write_ct_series(hu[3:], tmp_path, upper, StorageEncoding(1.0, -2048.0, bits_stored=16), tags,
                    file_names=lambda i: f"b{i}")
    volume = convert_folder(tmp_path)
    np.testing.assert_array_equal(volume.data, expected_volume(volume, hu, axial))
    assert volume.meta["rescale_slope_min"] == 0.5 and volume.meta["rescale_slope_max"] == 1.0


def test_hu_window_clips_and_is_a_parameter(tmp_path, axial):
    hu = known_hu()
    write_shuffled(hu, tmp_path, axial)
    volume = convert_folder(tmp_path, window=(-900, -500))
    assert volume.data.min() == -900 and volume.data.max() == -500
    np.testing.assert_array_equal(volume.data, expected_volume(volume, hu, axial, window=(-900, -500)))


def test_ct_small_real_file_through_the_hu_path(tmp_path):
    path = get_testdata_file("CT_small.dcm", download=False)
    volume = volume_from_files([path], hu_window=WIDE)
    assert volume.shape == (128, 128, 1)
    assert (int(volume.data.min()), int(volume.data.max())) == (-896, 1167)
    np.testing.assert_allclose(volume.spacing, (0.661468, 0.661468, 5.0), atol=1e-6)
    stored = pydicom.dcmread(path).pixel_array
    assert int(volume.data.sum()) == int((stored.astype(np.int64) - 1024).sum())
    NiftiVolumeDataset(str(tmp_path / "ct_small.nii.gz")).save(volume)
    reloaded = NiftiVolumeDataset(str(tmp_path / "ct_small.nii.gz")).load()
    np.testing.assert_array_equal(reloaded.data, volume.data)
    # the default window clips the real file too
    assert volume_from_files([path]).data.max() == 1000


def test_dicom_affine_is_lps_negated():
    affine = dicom_affine_ras((1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0), (0.5, 0.25), 2.0)
    np.testing.assert_allclose(affine, [[-0.25, 0, 0, -1], [0, -0.5, 0, -2], [0, 0, 2, 3], [0, 0, 0, 1]])


def test_volume_needs_slices():
    with pytest.raises(ValueError):
        volume_from_datasets([])
