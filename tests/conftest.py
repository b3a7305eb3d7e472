"""Shared test settings: offline, no telemetry, and the one place that finds the reference fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def reference_fixtures_dir() -> Path:
    """`GENERATECT_FIXTURES`, else `../shared/reference-fixtures` beside the checkout."""
    configured = os.environ.get("GENERATECT_FIXTURES")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "reference-fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The released modules' weights and outputs. CI must have them; a user's clone may not."""
    path = reference_fixtures_dir()
    if not path.is_dir():
        if os.environ.get("GENERATECT_REQUIRE_FIXTURES") == "1":
            pytest.fail(f"reference fixtures required but not found at {path}")
        pytest.skip(f"reference fixtures not found at {path} (set GENERATECT_FIXTURES to run equivalence tests)")
    return path
