"""Split nodes: patient-level, label-balanced train/valid/test assignment and its summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from generatect_kedro.cohort.split import split_patients as _split_patients
from generatect_kedro.cohort.split import summarise_splits as _summarise_splits


def split_patients(cohort: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """(volume_id, patient_key, split): every volume of a patient in one split, deterministic from the seed."""
    return _split_patients(cohort, params)


def summarise_splits(
    cohort: pd.DataFrame, splits: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Sizes and per-split label prevalence, so a skewed split is visible in 08_reporting and MLflow."""
    return _summarise_splits(cohort, splits, params)
