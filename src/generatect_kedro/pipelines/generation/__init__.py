"""Generation pipeline: prompts table → HU volumes (NIfTI + lineage sidecars) with the registered models."""

from generatect_kedro.pipelines.generation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
