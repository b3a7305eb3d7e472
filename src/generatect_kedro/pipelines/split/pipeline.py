"""Split: cohort → patient-level train/valid/test assignment (+ summary table and MLflow metrics)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.split import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(nodes.split_patients, ["cohort", "params:split"], "splits", name="split_patients"),
            Node(
                nodes.summarise_splits,
                ["cohort", "splits", "params:split"],
                ["split_summary", "split_metrics"],
                name="summarise_splits",
            ),
        ],
        tags="split",
    )
