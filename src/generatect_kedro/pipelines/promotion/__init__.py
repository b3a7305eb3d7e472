"""Promotion stage pipeline: trained versions through their evaluation gates to @champion."""

from generatect_kedro.pipelines.promotion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
