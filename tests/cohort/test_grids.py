import numpy as np
import pytest

from generatect_kedro.cohort.grids import GridSpec, grid_spacing_dhw, make_grid, scale_hu
from generatect_kedro.volume import HUVolume, from_dhw, to_dhw

MODES = ("fixed_grid", "spacing_first")


def phantom(shape=(60, 50, 30), spacing=(0.8, 0.7, 2.0), origin=(-20.0, -15.0, -30.0), centre=(5.0, 3.0, 10.0), half=4.0):
    """Air with one +1000 HU cube (edge 2·half mm) around `centre` (RAS mm)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ras = ijk * np.asarray(spacing) + np.asarray(origin)
    data = np.full(shape, -1000, np.int16)
    data[(np.abs(ras - np.asarray(centre)) <= half).all(-1)] = 1000
    return HUVolume(data, affine)


def centroid_ras(values_ijk, affine):
    """Centre of mass (RAS mm) of the bright part of an image in [-1, 1]."""
    weight = np.clip(values_ijk.astype(np.float64), -1, 1) + 1
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in values_ijk.shape], indexing="ij"), -1)
    centre = (idx * weight[..., None]).reshape(-1, 3).sum(0) / weight.sum()
    return (affine @ np.append(centre, 1.0))[:3]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(17, 32, 32), (17, 64, 64), (9, 16, 24), (1, 8, 8), (21, 40, 30)])
def test_grid_shape(mode, shape):
    grid = make_grid(phantom(), GridSpec(shape, (2.0, 1.0, 1.0)), mode=mode)
    assert grid.volume.shape == shape
    assert grid.volume.dtype == np.float32
    assert grid.affine.shape == (4, 4)


@pytest.mark.parametrize("shape", [(16, 32, 32), (0, 8, 8), (17, 0, 8)])
def test_depth_must_be_one_plus_2k(shape):
    with pytest.raises(ValueError):
        GridSpec(shape)


@pytest.mark.parametrize(
    "hu, scaled", [(-1000, -1.0), (0, 0.0), (1000, 1.0), (-3024, -1.0), (3071, 1.0), (500, 0.5), (-250, -0.25)]
)
def test_hu_scaling(hu, scaled):
    assert scale_hu(np.array([hu]))[0] == pytest.approx(scaled)


def test_other_window_maps_to_unit_range():
    assert scale_hu(np.array([-160.0, 40.0, 240.0, 1000.0]), (-160, 240)).tolist() == [-1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", MODES)
def test_values_stay_in_range_and_clip(mode):
    volume = phantom()
    volume.data[:5] = 3071  # out-of-window bone/metal
    volume.data[-5:] = -3024  # padding below air
    grid = make_grid(volume, GridSpec((17, 32, 32), (3.0, 1.5, 1.5)), mode=mode)
    assert grid.volume.min() >= -1.0 and grid.volume.max() <= 1.0
    assert grid.volume.max() == pytest.approx(1.0)


def test_fixed_grid_is_identity_at_source_size():
    volume = phantom(shape=(24, 20, 9))
    grid = make_grid(volume, GridSpec((9, 20, 24)), mode="fixed_grid")
    np.testing.assert_allclose(grid.volume, to_dhw(scale_hu(volume.data)), atol=1e-6)
    np.testing.assert_allclose(grid.affine, volume.affine)


def test_fixed_grid_depth_interpolation():
    data = np.zeros((8, 8, 3), np.int16)
    data[..., 0], data[..., 1], data[..., 2] = -1000, 0, 1000
    grid = make_grid(HUVolume(data, np.eye(4)), GridSpec((9, 4, 4)), mode="fixed_grid")
    profile = grid.volume[:, 0, 0]
    assert profile[0] == pytest.approx(-1) and profile[4] == pytest.approx(0) and profile[-1] == pytest.approx(1)
    assert np.all(np.diff(profile) >= 0)


@pytest.mark.parametrize("mode", MODES)
def test_cube_lands_where_it_is_in_mm(mode):
    volume = phantom()
    spec = GridSpec((17, 32, 32), (2.5, 1.5, 1.5))
    grid = make_grid(volume, spec, mode=mode)
    expected = centroid_ras(scale_hu(volume.data), volume.affine)
    got = centroid_ras(from_dhw(grid.volume), grid.affine)
    tolerance = 0.5 * max(grid.spacing_dhw)
    np.testing.assert_allclose(got, expected, atol=tolerance)


@pytest.mark.parametrize("mode", MODES)
def test_orientation_matches_to_dhw(mode):
    # cube at the patient's right (R+ large), anterior (A+ large), superior (S+ large)
    volume = phantom(centre=(15.0, 15.0, 20.0))
    grid = make_grid(volume, GridSpec((17, 32, 32), (3.5, 1.5, 1.5)), mode=mode)
    d, h, w = np.unravel_index(np.argmax(grid.volume), grid.volume.shape)
    assert d > 17 // 2  # superior → late slices
    assert h < 32 // 2  # anterior → top rows
    assert w < 32 // 2  # patient's right → image left
    # the source seen through to_dhw has the cube in the same relative place
    source = to_dhw(volume.data)
    sd, sh, sw = np.unravel_index(np.argmax(source), source.shape)
    assert np.allclose(np.array([d, h, w]) / np.array(grid.volume.shape), np.array([sd, sh, sw]) / np.array(source.shape), atol=0.2)


def test_spacing_first_has_target_spacing_and_pads_with_air():
    volume = phantom()  # 48 x 35 x 60 mm
    spec = GridSpec((33, 64, 64), (2.0, 1.0, 1.0))  # 66 x 64 x 64 mm: larger than the scan
    grid = make_grid(volume, spec, mode="spacing_first")
    assert grid.spacing_dhw == pytest.approx((2.0, 1.0, 1.0))
    assert grid.volume[0].max() == -1.0 and grid.volume[:, :, 0].max() == -1.0  # padded border is air
    # centre of the grid is the centre of the scan
    centre_grid = grid.affine @ np.append((np.array(spec.shape_ijk) - 1) / 2, 1)
    centre_scan = volume.affine @ np.append((np.array(volume.shape) - 1) / 2, 1)
    np.testing.assert_allclose(centre_grid, centre_scan, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_grid_spacing_from_header_matches_grid(mode):
    volume = phantom()
    spec = GridSpec((17, 32, 32), (2.5, 1.5, 1.5))
    grid = make_grid(volume, spec, mode=mode)
    assert grid_spacing_dhw(volume.shape, volume.spacing, spec, mode) == pytest.approx(grid.spacing_dhw)


def test_float16_and_bad_mode():
    volume = phantom()
    assert make_grid(volume, GridSpec((17, 32, 32)), dtype="float16").volume.dtype == np.float16
    with pytest.raises(ValueError):
        make_grid(volume, GridSpec((17, 32, 32)), mode="nearest")
    with pytest.raises(ValueError):
        make_grid(volume, GridSpec((17, 32, 32)), mode="spacing_first")  # no spacing given
