"""The writer extensions the phantom relies on: reproducible UIDs, head-first numbering, fast identical bytes."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from generatect_kedro.dicom.writer import (
    SeriesGeometry,
    StorageEncoding,
    build_slice_dataset,
    derived_uid,
    sop_instance_uid,
    write_ct_series,
)

GEOMETRY = SeriesGeometry(pixel_spacing=(5.0, 5.0), slice_spacing=6.0, origin_lps=(-80.0, -80.0, -300.0))
ENCODING = StorageEncoding(slope=0.5, intercept=-1024.0, unsigned=True, bits_stored=16)


def _hu(slices=6):
    return np.random.default_rng(0).normal(0, 400, (slices, 16, 16))


@pytest.mark.parametrize("extra_tags", [{}, {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "MÜLLER^JOHN"}])
def test_files_equal_what_dcmwrite_writes_for_a_fresh_dataset(tmp_path, extra_tags):
    tags = {"PatientID": "123", "SeriesDescription": "AXIAL", **extra_tags}
    entropy = ("test", 1)
    paths = write_ct_series(_hu(), tmp_path, GEOMETRY, ENCODING, tags, uid_entropy=entropy,
                            instance_numbers=[6, 5, 4, 3, 2, 1])
    full_tags = {**tags, **{k: derived_uid(*entropy, k) for k in
                            ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}}
    for index, path in enumerate(paths):
        ds = build_slice_dataset(ENCODING.to_stored(_hu()[index]), index, GEOMETRY, ENCODING, full_tags,
                                 sop_instance_uid=sop_instance_uid(entropy, index), instance_number=6 - index)
        expected = io.BytesIO()
        pydicom.dcmwrite(expected, ds, enforce_file_format=True)
        assert path.read_bytes() == expected.getvalue()


def test_uid_entropy_makes_output_reproducible(tmp_path):
    first = write_ct_series(_hu(), tmp_path / "a", GEOMETRY, ENCODING, uid_entropy=("x", 2))
    second = write_ct_series(_hu(), tmp_path / "b", GEOMETRY, ENCODING, uid_entropy=("x", 2))
    other = write_ct_series(_hu(), tmp_path / "c", GEOMETRY, ENCODING, uid_entropy=("x", 3))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    datasets = [pydicom.dcmread(p) for p in first + other]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2


def test_the_original_signature_still_gives_fresh_uids(tmp_path):
    first = write_ct_series(_hu(2), tmp_path / "a", GEOMETRY)
    second = write_ct_series(_hu(2), tmp_path / "b", GEOMETRY)
    a, b = pydicom.dcmread(first[0]), pydicom.dcmread(second[0])
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert [pydicom.dcmread(p).InstanceNumber for p in first] == [1, 2] and first[0].name == "IM00001.dcm"


def test_head_first_numbering_keeps_positions_ascending(tmp_path):
    paths = write_ct_series(_hu(3), tmp_path, GEOMETRY, ENCODING, instance_numbers=[3, 2, 1])
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [ds.InstanceNumber for ds in datasets] == [3, 2, 1]
    assert [float(ds.ImagePositionPatient[2]) for ds in datasets] == [-300.0, -294.0, -288.0]
    with pytest.raises(ValueError):
        write_ct_series(_hu(3), tmp_path / "bad", GEOMETRY, ENCODING, instance_numbers=[1, 2])
