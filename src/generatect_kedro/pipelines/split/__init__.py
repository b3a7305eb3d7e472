"""Patient-level split pipeline."""

from generatect_kedro.pipelines.split.pipeline import create_pipeline

__all__ = ["create_pipeline"]
