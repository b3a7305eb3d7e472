"""Data-quality pipeline (Great Expectations suites, quarantine, cohort)."""

from generatect_kedro.pipelines.data_quality.pipeline import create_pipeline

__all__ = ["create_pipeline"]
