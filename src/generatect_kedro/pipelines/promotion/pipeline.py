"""Promotion stage: the three registered versions (model_version JSONs) → gates → @champion → report."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.promotion import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(
                nodes.promote_trained_models,
                ["ctvit_model_version", "transformer_model_version", "superres_model_version",
                 "params:promotion", "evaluation_metrics"],
                "promotion_report",
                name="promote_trained_models",
            ),
        ],
        tags="promotion",
    )
