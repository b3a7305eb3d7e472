"""Small, valid upstream tables; each test breaks one thing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import yaml


def make_tables(n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    vols = [f"vol-{i:03d}" for i in range(n)]
    studies = [f"stu-{i:03d}" for i in range(n)]
    patients = [f"pat-{i // 2:03d}" for i in range(n)]
    metadata = pd.DataFrame(
        {
            "volume_id": vols,
            "study_key": studies,
            "patient_key": patients,
            "patient_age": ["058Y"] * n,
            "patient_sex": ["M", "F"] * (n // 2) + ["M"] * (n % 2),
            "manufacturer": ["SIEMENS"] * n,
            "rescale_slope": [1.0] * n,
            "rescale_intercept": [-1024.0] * n,
            "xy_spacing": [0.7] * n,
            "z_spacing": [1.5] * n,
            "slice_count": [200] * n,
        }
    )
    reports = pd.DataFrame(
        {"study_key": studies, "findings": ["Heart size is normal."] * n, "impression": ["Bilateral pleural effusion."] * n}
    )
    manifest = pd.DataFrame(
        {
            "volume_id": vols,
            "patient_key": patients,
            "study_key": studies,
            "source": ["dicom"] * n,
            "shape_i": [512] * n,
            "shape_j": [512] * n,
            "shape_k": [200] * n,
            "spacing_i": [0.7] * n,
            "spacing_j": [0.7] * n,
            "spacing_k": [1.5] * n,
            "rescale_slope": [1.0] * n,
            "rescale_intercept": [-1024.0] * n,
            "hu_p01": [-1000.0] * n,
            "hu_p50": [-700.0] * n,
            "hu_p99": [400.0] * n,
            "hu_min": [-1024.0] * n,
            "hu_max": [2500.0] * n,
            "manufacturer": ["SIEMENS"] * n,
            "file_count": [200] * n,
            "nifti_file": [f"{v}.nii.gz" for v in vols],
            "sha256": [hashlib.sha256(v.encode()).hexdigest() for v in vols],
        }
    )
    return metadata, reports, manifest


@pytest.fixture
def tables():
    return make_tables()


@pytest.fixture
def dq_params():
    """The shipped data-quality parameters (conf/base), so tests also check the configuration."""
    path = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_data_quality.yml"
    return yaml.safe_load(path.read_text())["data_quality"]
