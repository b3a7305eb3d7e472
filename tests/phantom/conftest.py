"""Fixtures for the phantom tests: one small cohort (with broken cases) written once per session."""

from __future__ import annotations

import pytest
from phantom_test_helpers import SMALL_CONFIG, SMALL_PATIENTS, SMALL_SEED

from generatect_kedro.phantom.cohort import plan_cohort, write_demo_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """(summary, good study specs) of a 5-patient cohort with every broken case."""
    out_dir = tmp_path_factory.mktemp("phantom_cohort")
    summary = write_demo_cohort(out_dir, SMALL_PATIENTS, SMALL_SEED, broken=True, config=SMALL_CONFIG)
    return summary, plan_cohort(SMALL_PATIENTS, SMALL_SEED, SMALL_CONFIG)
