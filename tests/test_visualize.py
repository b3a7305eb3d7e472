"""Tri-planar previews: HU windows, plane orientation, and a figure that renders to PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generatect_kedro.visualize import WINDOWS, apply_window, triplanar_figure, triplanar_slices


def test_windows_map_hu_to_unit_range():
    level, width = WINDOWS["lung"]
    values = apply_window(np.array([level - width, level - width / 2, level, level + width / 2, 3000]), "lung")
    np.testing.assert_allclose(values, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert apply_window(np.array([50.0]), (50.0, 100.0))[0] == pytest.approx(0.5)


def test_planes_cross_the_centre_with_superior_up():
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    axial, coronal, sagittal = triplanar_slices(volume)
    assert axial.shape == (6, 7) and coronal.shape == (5, 7) and sagittal.shape == (5, 6)
    np.testing.assert_array_equal(axial, volume[2])
    np.testing.assert_array_equal(coronal[0], volume[4, 3, :])  # top row = most superior slice
    np.testing.assert_array_equal(sagittal[-1], volume[0, :, 3])
    with pytest.raises(ValueError):
        triplanar_slices(volume[0])


def test_figure_has_a_row_per_volume_and_window_and_renders():
    rng = np.random.default_rng(0)
    rows = {"input": rng.uniform(-1000, 1000, (9, 16, 16)), "recon": rng.uniform(-1000, 1000, (9, 16, 16))}
    figure = triplanar_figure(rows, spacing_dhw=(18.0, 11.0, 11.0), title="t")
    assert len(figure.axes) == 2 * 2 * 3
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.format == "PNG" and image.size[0] > 100
    with pytest.raises(ValueError, match="shape"):
        triplanar_figure({"a": np.zeros((3, 4, 4)), "b": np.zeros((3, 4, 5))})
