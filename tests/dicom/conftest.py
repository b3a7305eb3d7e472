"""Fixtures for DICOM ingestion tests."""

from __future__ import annotations

import pytest

from generatect_kedro.dicom.writer import SeriesGeometry


@pytest.fixture
def axial() -> SeriesGeometry:
    return SeriesGeometry(pixel_spacing=(0.7, 0.8), slice_spacing=2.5, origin_lps=(-120.0, -90.0, -300.0))
