"""Transformer stage: cached prompt embeddings + CT-ViT tokens → MaskGIT → registry (@challenger) → proof
that the prompt controls the output."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.transformer import conditioning, nodes
from generatect_kedro.text.prompt_cache import embed_prompts


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            # Only prompts not yet cached by this encoder are encoded; the consumers read the saved
            # `prompt_embeddings` / `prompt_index` (not the cache view), so they run after the save.
            Node(
                embed_prompts,
                ["cohort", "params:transformer", "prompt_embeddings_cache"],
                ["prompt_embeddings", "prompt_index"],
                name="embed_prompts",
            ),
            Node(
                nodes.train_transformer,
                ["ctvit_tokens", "ctvit_token_index", "prompt_embeddings", "prompt_index", "splits", "cohort",
                 "params:transformer"],
                ["transformer_weights", "transformer_training_summary"],
                name="train_transformer",
            ),
            Node(
                nodes.register_transformer,
                ["transformer_weights", "transformer_training_summary", "ctvit_model_version", "prompt_index",
                 "params:transformer"],
                "transformer_model_version",
                name="register_transformer",
            ),
            Node(
                conditioning.conditioning_report,
                ["transformer_model_version", "ctvit_token_index", "ctvit_tokens", "cohort", "params:transformer"],
                ["transformer_conditioning", "transformer_conditioning_montage"],
                name="transformer_conditioning_report",
            ),
        ],
        tags="transformer",
    )
