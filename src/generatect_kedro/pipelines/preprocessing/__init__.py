"""Preprocessing pipeline (model grids)."""

from generatect_kedro.pipelines.preprocessing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
