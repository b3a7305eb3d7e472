"""Super-resolution stage: stage-1 inputs (CT-ViT reconstructions) → cascade training (DeepSpeed) →
evaluation against trilinear → registry (@challenger)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.superres import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(
                nodes.prepare_superres_pairs,
                ["grids_lowres", "grids_fullres", "ctvit_weights", "ctvit_model_version", "splits",
                 "params:superres"],
                ["superres_lowres_recon", "superres_recon_index"],
                name="prepare_superres_pairs",
            ),
            Node(
                nodes.train_superres,
                ["superres_lowres_recon", "grids_fullres", "prompt_embeddings", "prompt_index", "splits",
                 "params:superres"],
                ["superres_weights", "superres_training_summary"],
                name="train_superres",
            ),
            Node(
                nodes.evaluate_superres,
                ["superres_weights", "superres_training_summary", "superres_lowres_recon", "grids_fullres",
                 "prompt_embeddings", "prompt_index", "splits", "params:superres"],
                ["superres_evaluation", "superres_preview"],
                name="evaluate_superres",
            ),
            Node(
                nodes.register_superres,
                ["superres_weights", "superres_training_summary", "superres_evaluation", "ctvit_model_version",
                 "params:superres"],
                "superres_model_version",
                name="register_superres",
            ),
        ],
        tags="superres",
    )
