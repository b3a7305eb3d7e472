"""Preprocessing: cohort HU volumes → low-res and full-res model grids (safetensors) + a grid index."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.preprocessing import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(
                nodes.make_grids,
                ["hu_volumes", "cohort", "params:preprocessing"],
                ["grids_lowres", "grids_fullres"],
                name="make_grids",
            ),
            Node(nodes.index_grids, ["cohort", "volume_manifest", "params:preprocessing"], "grid_index", name="index_grids"),
        ],
        tags="preprocessing",
    )
