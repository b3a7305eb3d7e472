"""CT-ViT stage: low-res grids → trained VQ autoencoder → registry (@challenger) → cached token ids."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.ctvit import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(
                nodes.train_ctvit,
                ["grids_lowres", "splits", "params:ctvit"],
                ["ctvit_weights", "ctvit_training_summary"],
                name="train_ctvit",
            ),
            Node(
                nodes.register_ctvit,
                ["ctvit_weights", "ctvit_training_summary", "params:ctvit"],
                "ctvit_model_version",
                name="register_ctvit",
            ),
            Node(
                nodes.encode_tokens,
                ["ctvit_weights", "ctvit_model_version", "grids_lowres", "splits", "params:ctvit"],
                ["ctvit_tokens", "ctvit_token_index"],
                name="encode_ctvit_tokens",
            ),
        ],
        tags="ctvit",
    )
