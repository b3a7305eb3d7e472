"""Text conditioning: the frozen prompt encoder's node-level functions and the prompt-embedding cache."""

from generatect_kedro.text.prompt_cache import (
    EMBEDDING_FORMAT,
    PROMPT_INDEX_COLUMNS,
    PromptCacheSettings,
    embed_prompts,
    embedding_loaders,
    pad_embeddings,
    prompt_key,
)

__all__ = [
    "EMBEDDING_FORMAT",
    "PROMPT_INDEX_COLUMNS",
    "PromptCacheSettings",
    "embed_prompts",
    "embedding_loaders",
    "pad_embeddings",
    "prompt_key",
]
