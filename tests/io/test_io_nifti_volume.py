"""NiftiVolumeDataset / HUVolumeFolderDataset / NiftiImageDataset / DicomDirectoryDataset contracts."""

from __future__ import annotations

import gzip
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from kedro.io import AbstractDataset, DatasetError

from generatect_kedro.io.dicom_directory import DicomDirectoryDataset, DicomIndex
from generatect_kedro.io.nifti_volume import (
    ConversionFailure,
    HUVolumeFolderDataset,
    NiftiImageDataset,
    NiftiVolumeDataset,
)
from generatect_kedro.volume import HUVolume


@pytest.fixture
def volume() -> HUVolume:
    data = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 7 - 1000).astype(np.int16)
    affine = np.array([[0.75, 0, 0, -90.0], [0, 0.8, 0, -120.5], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    return HUVolume(data, affine, {"source": "dicom", "rescale_slope_min": 0.5, "unknown": float("nan")})


def test_round_trip_header_and_sha(tmp_path, volume):
    path = tmp_path / "v.nii.gz"
    dataset = NiftiVolumeDataset(str(path))
    assert isinstance(dataset, AbstractDataset) and not dataset.exists()
    dataset.save(volume)
    assert dataset.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]  # no temp file left
    image = nib.load(path)
    header = image.header
    assert header.get_data_dtype() == np.int16
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), volume.affine, atol=1e-4)
    np.testing.assert_allclose(image.get_sform(), volume.affine, atol=1e-4)
    assert header.get_xyzt_units()[0] == "mm"
    assert np.isnan(header["scl_slope"]) and np.isnan(header["scl_inter"])  # never rescaled again
    loaded = dataset.load()
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.data.dtype == np.int16
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    assert loaded.meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.meta["source"] == "dicom" and loaded.meta["unknown"] is None


def test_bytes_are_deterministic(tmp_path, volume):
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    NiftiVolumeDataset(str(first)).save(volume)
    NiftiVolumeDataset(str(second)).save(HUVolume(volume.data.copy(), volume.affine.copy(), dict(volume.meta)))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert gzip.decompress(first.read_bytes())[:4] == (348).to_bytes(4, "little")  # NIfTI-1 header


def test_float_input_is_stored_as_int16_only_if_integral(tmp_path, volume):
    path = tmp_path / "v.nii.gz"
    NiftiVolumeDataset(str(path)).save(HUVolume(volume.data.astype(np.float32), volume.affine))
    assert nib.load(path).get_data_dtype() == np.int16
    with pytest.raises(DatasetError):
        NiftiVolumeDataset(str(path)).save(HUVolume(volume.data + 0.5, volume.affine))


def test_conversion_failure_writes_sidecar_and_removes_stale_volume(tmp_path, volume):
    path = tmp_path / "ser-1.nii.gz"
    dataset = NiftiVolumeDataset(str(path))
    dataset.save(volume)
    dataset.save(ConversionFailure("ser-1", "ValueError: broken"))
    assert not path.exists()
    payload = json.loads((tmp_path / "ser-1.nii.gz.error.json").read_text())
    assert payload == {"error": "ValueError: broken", "reason_code": "conversion_failed", "volume_id": "ser-1"}
    dataset.save(volume)
    assert path.exists() and not (tmp_path / "ser-1.nii.gz.error.json").exists()


def test_folder_dataset_lazy_save_and_empty_load(tmp_path, volume):
    folder = HUVolumeFolderDataset(path=str(tmp_path / "volumes"))
    assert folder.load() == {}
    calls = []

    def make():
        calls.append(1)
        return volume

    folder.save({"ser-a": make, "ser-b": lambda: ConversionFailure("ser-b", "boom")})
    assert calls == [1]
    loaded = folder.load()
    assert sorted(loaded) == ["ser-a"]  # the failure sidecar is not a partition
    np.testing.assert_array_equal(loaded["ser-a"]().data, volume.data)


def test_raw_nifti_image_dataset_is_read_only(tmp_path, volume):
    path = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(volume.data, volume.affine), path)
    dataset = NiftiImageDataset(str(path))
    assert dataset.load().shape == volume.shape
    with pytest.raises(DatasetError):
        dataset.save(object())


def test_dicom_directory_dataset(tmp_path):
    (tmp_path / "junk").write_text("not dicom")
    dataset = DicomDirectoryDataset(str(tmp_path))
    index = dataset.load()
    assert isinstance(index, DicomIndex) and len(index.headers) == 1
    assert not index.headers["readable"].iloc[0]
    assert "files=1" in repr(index)
    assert "path" in dataset._describe()
    with pytest.raises(DatasetError):
        dataset.save(index)
    with pytest.raises(ValueError):
        index.full_path("../outside")
    with pytest.raises(DatasetError):
        DicomDirectoryDataset(str(tmp_path / "missing")).load()
