"""`write_generated_volume`: int16 NIfTI with the real affine, tri-planar preview in two windows, and a sidecar
that is written last and atomically, so that its presence can mark an item finished."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from generatect_kedro import visualize
from generatect_kedro.dicom import synthetic
from generatect_kedro.generation import outputs
from generatect_kedro.generation.outputs import (
    LUNG_WINDOW,
    MEDIASTINAL_WINDOW,
    PREVIEW_SIZE_PX,
    preview_title,
    write_generated_volume,
)
from generatect_kedro.io.nifti_volume import NiftiVolumeDataset
from generatect_kedro.utils.atomic import file_sha256
from generatect_kedro.volume import HUVolume, affine_from_spacing, hu_to_int16

RECORD = {"schema": "generatect-lineage/1",
          "item": {"item_id": "row1-0", "row": 1, "index_in_row": 0, "seed": 1234, "slice_count": 10,
                   "prompt": "Large right pleural effusion with compressive atelectasis. " * 5},
          "models": {}, "created_utc": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def volume() -> HUVolume:
    """Float HU as a sampler produces them: lung (-850) and soft tissue (40) halves, anisotropic voxels."""
    data = np.full((20, 16, 10), -850.3)
    data[:, 8:, :] = 40.4
    data[3, 4, 5] = 1200.6
    return HUVolume(data, affine_from_spacing((0.7, 0.8, 2.5), (-7.0, -6.0, -12.5)))


def test_nifti_is_int16_hu_with_the_real_affine(volume, tmp_path):
    written = write_generated_volume(volume, RECORD, tmp_path, "row1-0", preview=False)
    assert written == {"nifti": "row1-0.nii.gz", "sidecar": "row1-0.json"}
    image = nib.load(tmp_path / "row1-0.nii.gz")
    header = image.header
    assert header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), hu_to_int16(volume.data))
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-6)
    np.testing.assert_allclose(header.get_zooms(), (0.7, 0.8, 2.5), atol=1e-6)
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), volume.affine, atol=1e-5)
    assert header.get_xyzt_units()[0] == "mm"
    assert b"SYNTHETIC" in header["descrip"].tobytes()
    assert np.isnan(header["scl_slope"]) or float(header["scl_slope"]) in (0.0, 1.0)  # never rescaled again


def test_sidecar_records_the_actual_hashes_and_geometry(volume, tmp_path):
    write_generated_volume(volume, RECORD, tmp_path, "row1-0", preview=False)
    sidecar = json.loads((tmp_path / "row1-0.json").read_text())
    assert {k: sidecar[k] for k in RECORD} == RECORD  # the record travels unchanged
    section = sidecar["volume"]
    reloaded = NiftiVolumeDataset(str(tmp_path / "row1-0.nii.gz")).load()
    assert section["nifti_sha256"] == file_sha256(tmp_path / "row1-0.nii.gz") == reloaded.meta["sha256"]
    assert section["voxel_sha256"] == reloaded.voxel_sha256()
    assert section["shape_ijk"] == [20, 16, 10] and section["shape_dhw"] == [10, 16, 20]
    assert section["spacing_mm"] == [0.7, 0.8, 2.5] and section["dtype"] == "int16" and section["units"] == "HU"
    np.testing.assert_allclose(section["affine"], volume.affine)
    assert section["preview"] is None and section["dicom"] is None


def test_voxel_hash_survives_a_spacing_float32_cannot_hold(volume, tmp_path):
    """NIfTI stores the affine in float32: the recorded hash must be that of what is read back (regression:
    a demo spacing of 295/17 mm gave a lineage MISMATCH on a freshly written volume)."""
    odd = HUVolume(volume.data, affine_from_spacing((5.514880, 5.514880, 295 / 17), (-173.3333333, -171.1, -147.5)))
    write_generated_volume(odd, RECORD, tmp_path, "odd", preview=False)
    section = json.loads((tmp_path / "odd.json").read_text())["volume"]
    assert section["voxel_sha256"] == NiftiVolumeDataset(str(tmp_path / "odd.nii.gz")).load().voxel_sha256()


def test_preview_has_two_windows_three_planes_and_the_item_in_its_title(volume, tmp_path, monkeypatch):
    windows = []
    real = visualize.apply_window

    def spy(hu, window):
        windows.append(tuple(window))
        return real(hu, window)

    monkeypatch.setattr(visualize, "apply_window", spy)
    written = write_generated_volume(volume, RECORD, tmp_path, "row1-0")
    assert written["preview"] == "row1-0_preview.png"
    assert sorted(set(windows)) == sorted({LUNG_WINDOW, MEDIASTINAL_WINDOW}) and len(windows) == 6
    assert LUNG_WINDOW == (-600.0, 1500.0) and MEDIASTINAL_WINDOW == (40.0, 400.0)
    png = Image.open(tmp_path / "row1-0_preview.png")
    assert png.size == PREVIEW_SIZE_PX
    pixels = np.asarray(png.convert("L"), dtype=float)
    top, bottom = pixels[: pixels.shape[0] // 2], pixels[pixels.shape[0] // 2:]
    assert top.mean() > bottom.mean() + 5  # -850 HU lung is grey in the lung window, black in the mediastinal
    title = preview_title(RECORD)
    assert "row1-0" in title and "seed=1234" in title and len(title) < 120 and title.endswith("…")
    assert json.loads((tmp_path / "row1-0.json").read_text())["volume"]["preview"] == "row1-0_preview.png"


def test_sidecar_is_written_last(volume, tmp_path, monkeypatch):
    real = outputs.atomic_write_text
    seen = {}

    def watch(target, text):
        seen["before_sidecar"] = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        real(target, text)

    monkeypatch.setattr(outputs, "atomic_write_text", watch)
    write_generated_volume(volume, RECORD, tmp_path, "row1-0", dicom=True)
    assert seen["before_sidecar"] == ["row1-0.nii.gz", "row1-0_dicom", "row1-0_preview.png"]
    section = json.loads((tmp_path / "row1-0.json").read_text())["volume"]
    files = sorted(p.name for p in (tmp_path / "row1-0_dicom").iterdir())
    assert section["dicom"]["files"] == files and len(files) == 10
    ds = pydicom.dcmread(tmp_path / "row1-0_dicom" / files[0], stop_before_pixels=True)
    assert ds.SeriesInstanceUID == section["dicom"]["series_instance_uid"]
    assert synthetic.read_lineage_record(ds)["volume"]["voxel_sha256"] == section["voxel_sha256"]


def _fail_on_call(n: int, real, error: type[BaseException] = OSError):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise error("simulated failure mid-write")
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("where", ["dicom_slice", "sidecar", "preview_interrupt"])
def test_failure_mid_write_leaves_no_final_named_file(volume, tmp_path, monkeypatch, where):
    if where == "dicom_slice":  # the 4th slice of the series fails
        monkeypatch.setattr(synthetic.pydicom, "dcmwrite", _fail_on_call(4, pydicom.dcmwrite))
    elif where == "sidecar":  # the sidecar's bytes are half written when the disk fills up
        def half_then_fail(target, text):
            with outputs.atomic_path(target) as tmp:
                tmp.write_text(text[: len(text) // 2])
                raise OSError("No space left on device")

        monkeypatch.setattr(outputs, "atomic_write_text", half_then_fail)
    else:  # Ctrl-C while the PNG is being rendered
        from matplotlib.figure import Figure

        monkeypatch.setattr(Figure, "savefig", _fail_on_call(1, Figure.savefig, KeyboardInterrupt))
    with pytest.raises((OSError, KeyboardInterrupt)):
        write_generated_volume(volume, RECORD, tmp_path, "row1-0", dicom=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither final names nor temporaries remain


def test_rewriting_an_item_replaces_its_outputs(volume, tmp_path):
    stale = tmp_path / ".row1-0_dicom.partial-killed"  # what a SIGKILL mid-series leaves behind
    stale.mkdir()
    (stale / "IM00001.dcm").write_bytes(b"half")
    write_generated_volume(volume, RECORD, tmp_path, "row1-0", dicom=True, preview=False)
    first = json.loads((tmp_path / "row1-0.json").read_text())["volume"]["dicom"]["series_instance_uid"]
    write_generated_volume(volume, RECORD, tmp_path, "row1-0", dicom=True, preview=False)
    second = json.loads((tmp_path / "row1-0.json").read_text())["volume"]["dicom"]
    assert second["series_instance_uid"] != first  # fresh UIDs, and the old series is gone, not mixed in
    assert len(list((tmp_path / "row1-0_dicom").iterdir())) == len(second["files"]) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["row1-0.json", "row1-0.nii.gz", "row1-0_dicom"]


def test_failed_rewrite_unfinishes_the_item(volume, tmp_path, monkeypatch):
    """A finished item whose rewrite fails must not keep a sidecar vouching for files that changed."""
    write_generated_volume(volume, RECORD, tmp_path, "row1-0", preview=False)
    monkeypatch.setattr(outputs, "atomic_write_text", _fail_on_call(1, outputs.atomic_write_text))
    with pytest.raises(OSError):
        write_generated_volume(volume, RECORD, tmp_path, "row1-0", preview=False)
    assert not (tmp_path / "row1-0.json").exists() and not (tmp_path / "row1-0.nii.gz").exists()


def test_bad_stem_is_refused(volume, tmp_path):
    with pytest.raises(ValueError, match="stem"):
        write_generated_volume(volume, RECORD, tmp_path, "../escape")
