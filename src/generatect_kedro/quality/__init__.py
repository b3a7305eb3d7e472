"""Data quality with Great Expectations: suites from parameters, quarantine rows, the stop rule, docs.

Great Expectations is imported lazily (it takes seconds), so importing this package stays cheap.
"""

from generatect_kedro.quality.suites import (
    QUARANTINE_COLUMNS,
    DataQualityError,
    cross_check,
    enforce_thresholds,
    quarantine_rows,
    run_suite,
)

__all__ = [
    "QUARANTINE_COLUMNS",
    "DataQualityError",
    "cross_check",
    "enforce_thresholds",
    "quarantine_rows",
    "run_suite",
]
