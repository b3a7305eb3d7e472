"""Evaluation stage (issue #7): real-data classifier, generated test/utility volumes, fidelity, alignment, HU
sanity, the utility experiment, and the report whose metrics the promotion gates read."""

from generatect_kedro.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
