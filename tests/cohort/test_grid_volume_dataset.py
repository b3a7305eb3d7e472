import numpy as np
import pytest
from kedro.io import DatasetError
from kedro_datasets.partitions import PartitionedDataset

from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.io.grid_volume import GridVolumeDataset


def grid(dtype=np.float32):
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 0.75, 2.5, 1.0])
    affine[:3, 3] = (-10.123456789, 3.3, 7.0)
    return GridVolume(rng.uniform(-1, 1, (5, 6, 7)).astype(dtype), affine, {"resize_mode": "fixed_grid"})


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip(tmp_path, dtype):
    dataset = GridVolumeDataset(str(tmp_path / "a" / "v.safetensors"))
    assert not dataset.exists()
    original = grid(dtype)
    dataset.save(original)
    loaded = dataset.load()
    assert dataset.exists()
    assert loaded.volume.dtype == dtype and loaded.volume.shape == (5, 6, 7)
    np.testing.assert_array_equal(loaded.volume, original.volume)
    assert loaded.affine.dtype == np.float64
    np.testing.assert_array_equal(loaded.affine, original.affine)  # float64 kept bit-exact
    assert loaded.meta == {"resize_mode": "fixed_grid"}
    assert list(tmp_path.joinpath("a").iterdir()) == [tmp_path / "a" / "v.safetensors"]  # no temp files left


def test_dtype_argument_casts_and_rejects_others(tmp_path):
    dataset = GridVolumeDataset(str(tmp_path / "v.safetensors"), dtype="float16")
    dataset.save(grid(np.float32))
    assert dataset.load().volume.dtype == np.float16
    with pytest.raises(DatasetError):
        GridVolumeDataset(str(tmp_path / "w.safetensors"), dtype="int16")
    with pytest.raises(DatasetError):
        GridVolumeDataset(str(tmp_path / "w.safetensors")).save(GridVolume(np.zeros((1, 2, 2), np.int16), np.eye(4)))


def test_failed_save_keeps_previous_file(tmp_path):
    dataset = GridVolumeDataset(str(tmp_path / "v.safetensors"))
    dataset.save(grid())
    before = (tmp_path / "v.safetensors").read_bytes()
    with pytest.raises(Exception):
        dataset.save({"volume": np.zeros((2, 2, 2), np.float32), "affine": np.eye(3)})  # bad affine
    assert (tmp_path / "v.safetensors").read_bytes() == before


def test_missing_file_and_remote_paths(tmp_path):
    with pytest.raises(DatasetError):
        GridVolumeDataset(str(tmp_path / "nope.safetensors")).load()
    with pytest.raises(DatasetError):
        GridVolumeDataset("s3://bucket/x.safetensors")


def test_partitioned_lazy_save_and_load(tmp_path):
    calls = []

    def lazy(value):
        def make():
            calls.append(value)
            g = grid()
            g.volume[:] = value
            return g

        return make

    partitioned = PartitionedDataset(
        path=str(tmp_path / "grids"),
        dataset="generatect_kedro.io.grid_volume.GridVolumeDataset",
        filename_suffix=".safetensors",
    )
    partitioned.save({"vol-a": lazy(0.25), "vol-b": lazy(-0.5)})
    assert calls == [0.25, -0.5]
    loaded = partitioned.load()
    assert sorted(loaded) == ["vol-a", "vol-b"]
    assert float(loaded["vol-b"]().volume.mean()) == pytest.approx(-0.5)
