"""CT-ViT stage pipeline (train, register, cache token ids)."""

from generatect_kedro.pipelines.ctvit.pipeline import create_pipeline

__all__ = ["create_pipeline"]
