"""Prompt-embedding cache: each unique prompt is encoded once, so transformer training never runs the encoder.

`embed_prompts` is the node: cohort prompts → one `PromptEmbedding` per unique prompt (partition name = first
16 hex chars of the prompt's sha256, so no report text reaches file names) and a per-volume index.

Incremental by input, not by side effect: the node gets the existing files' metadata
(`PromptEmbeddingCacheDataset`, same folder as the output) and returns only prompts that are new or were
made by another encoder, max_length, compute dtype or storage dtype; the output ``PartitionedDataset``
(``overwrite: false``) writes just those. With nothing new, the encoder is not even loaded. Files of prompts
no longer in the cohort stay on disk but are not in the index; consumers go through the index.

Prompts are batched by equal token count, so no padding enters the encoder and a prompt's stored embedding
does not depend on which other prompts were encoded with it (bit-identical on CPU, checked in the tests):
re-running on a grown cohort leaves old files byte-identical.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from generatect_kedro.io.embedding_dataset import STORAGE_DTYPES, PromptEmbedding
from generatect_kedro.models.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    TextEncoderError,
    encoder_fingerprint,
    inspect_encoder,
)

LOG = logging.getLogger(__name__)

__all__ = [
    "EMBEDDING_FORMAT",
    "PROMPT_INDEX_COLUMNS",
    "PromptCacheSettings",
    "embed_prompts",
    "embedding_loaders",
    "pad_embeddings",
    "prompt_key",
]

EMBEDDING_FORMAT = "generatect-prompt-embedding/1"
PROMPT_INDEX_COLUMNS = ["volume_id", "prompt_key", "n_tokens", "encoder_fingerprint"]
KEY_CHARS = 16


def prompt_key(prompt: str) -> str:
    """Partition name of a prompt: the first 16 hex chars of sha256(utf-8 text); no text in file names."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:KEY_CHARS]


@dataclass(frozen=True)
class PromptCacheSettings:
    """`params:transformer` → the encoder config (expected_dim = model.dim_context) and cache settings."""

    encoder: TextEncoderConfig
    batch_size: int = 32
    storage_dtype: str = "float32"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PromptCacheSettings:
        section = params.get("text_encoder")
        if not isinstance(section, Mapping):
            raise TextEncoderError("parameters need a transformer.text_encoder section with at least `path`")
        section = dict(section)
        batch_size = int(section.pop("batch_size", 32))
        storage_dtype = str(section.pop("storage_dtype", "float32"))
        if batch_size < 1:
            raise TextEncoderError(f"text_encoder.batch_size must be ≥ 1, got {batch_size}")
        if storage_dtype not in STORAGE_DTYPES:
            raise TextEncoderError(f"text_encoder.storage_dtype must be one of {STORAGE_DTYPES}, "
                                   f"got {storage_dtype!r}")
        dim_context = (params.get("model") or {}).get("dim_context")
        if section.get("expected_dim") is None and dim_context is not None:
            section["expected_dim"] = dim_context
        return cls(TextEncoderConfig.from_params(section), batch_size, storage_dtype)


def _cohort_prompts(cohort: pd.DataFrame) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """[(volume_id, key)] sorted by volume, and {key: prompt}; empty prompts and hash collisions are errors."""
    missing = {"volume_id", "prompt"} - set(cohort.columns)
    if missing:
        raise ValueError(f"cohort lacks columns {sorted(missing)}")
    volume_ids = cohort["volume_id"].astype(str)
    if volume_ids.duplicated().any():
        raise ValueError(f"cohort has duplicate volume_id values, e.g. {volume_ids[volume_ids.duplicated()].iloc[0]}")
    rows, prompts = [], {}
    for volume_id, prompt in sorted(zip(volume_ids, cohort["prompt"])):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"volume {volume_id} has an empty prompt; such rows belong in the quarantine")
        key = prompt_key(prompt)
        if prompts.setdefault(key, prompt) != prompt:
            raise ValueError(f"prompt key collision on {key}; increase KEY_CHARS")
        rows.append((volume_id, key))
    return rows, prompts


def _reusable(meta: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    return meta is not None and all(str(meta.get(name)) == value for name, value in wanted.items())


def _cached_meta(value: Any) -> Mapping[str, str] | None:
    """Metadata from the cache input: a metadata dict, or a PartitionedDataset loader of a PromptEmbedding."""
    if isinstance(value, Mapping):
        return value
    if callable(value):
        loaded = value()
        return {**loaded.meta, "n_tokens": str(loaded.n_tokens), "dim": str(loaded.embeds.shape[1])}
    return None


def embed_prompts(cohort: pd.DataFrame, params: Mapping[str, Any],
                  prompt_embeddings_cache: Mapping[str, Any] | None = None,
                  ) -> tuple[dict[str, PromptEmbedding], pd.DataFrame]:
    """Embeddings of the cohort's unique prompts not yet cached by this encoder, and the full prompt index.

    `params` is the transformer section (`text_encoder` settings, `model.dim_context`); the cache input maps
    prompt keys to file metadata. Returns (new partitions, index with volume_id/prompt_key/n_tokens/fingerprint).
    """
    settings = PromptCacheSettings.from_params(params)
    rows, prompts = _cohort_prompts(cohort)
    folder, kind, hidden = inspect_encoder(settings.encoder)
    fingerprint = encoder_fingerprint(folder)
    wanted = {"format": EMBEDDING_FORMAT, "encoder_fingerprint": fingerprint,
              "max_length": str(settings.encoder.max_length), "encoder_dtype": settings.encoder.dtype,
              "storage_dtype": settings.storage_dtype, "dim": str(hidden)}
    cache = dict(prompt_embeddings_cache or {})
    n_tokens: dict[str, int] = {}
    for key, prompt in prompts.items():
        meta = _cached_meta(cache[key]) if key in cache else None
        if _reusable(meta, {**wanted, "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest()}):
            n_tokens[key] = int(meta["n_tokens"])
    todo = sorted(set(prompts) - set(n_tokens))
    LOG.info("prompt embeddings: %d volumes, %d unique prompts, %d cached, %d to encode (encoder %s…, %s, %d-d)",
             len(rows), len(prompts), len(n_tokens), len(todo), fingerprint[:12], kind, hidden)
    new = _encode(todo, prompts, settings, wanted) if todo else {}
    n_tokens.update({key: item.n_tokens for key, item in new.items()})
    index = pd.DataFrame([(v, k, n_tokens[k], fingerprint) for v, k in rows], columns=PROMPT_INDEX_COLUMNS)
    return new, index


def _encode(keys: list[str], prompts: Mapping[str, str], settings: PromptCacheSettings,
            wanted: Mapping[str, str]) -> dict[str, PromptEmbedding]:
    """Encode in batches of equal token count (no padding, so results do not depend on batch mates)."""
    encoder = TextEncoder(settings.encoder)
    if encoder.fingerprint != wanted["encoder_fingerprint"]:  # the folder changed while we were looking at it
        raise TextEncoderError(f"text encoder files in {encoder.folder} changed during embedding; run again")
    buckets: dict[int, list[str]] = defaultdict(list)
    for key, count in zip(keys, encoder.token_counts([prompts[k] for k in keys])):
        buckets[count].append(key)
    dtype = np.dtype(settings.storage_dtype)
    out: dict[str, PromptEmbedding] = {}
    for count in sorted(buckets):
        bucket = buckets[count]
        for start in range(0, len(bucket), settings.batch_size):
            chunk = bucket[start:start + settings.batch_size]
            embeds, mask = encoder.encode([prompts[k] for k in chunk])
            if embeds.shape[1] != count or not bool(mask.all()):
                raise RuntimeError(f"tokenizer gave a ragged bucket for token count {count}")
            for key, row in zip(chunk, embeds):
                meta = {**wanted, "encoder_kind": encoder.kind, "n_tokens": str(count),
                        "prompt_sha256": hashlib.sha256(prompts[key].encode("utf-8")).hexdigest()}
                out[key] = PromptEmbedding(row.numpy().astype(dtype), np.ones(count, dtype=bool), meta)
    return out


def embedding_loaders(prompt_index: pd.DataFrame, prompt_embeddings: Mapping[str, Callable[[], Any]],
                      ) -> tuple[dict[str, Callable[[], Any]], str]:
    """({volume_id: partition loader}, encoder fingerprint) for training; refuses a mix of encoders or a gap."""
    fingerprints = sorted(set(prompt_index["encoder_fingerprint"].astype(str)))
    if len(fingerprints) != 1:
        raise ValueError(f"prompt index mixes {len(fingerprints)} encoder fingerprints; re-run embed_prompts")
    absent = sorted(set(prompt_index["prompt_key"].astype(str)) - set(prompt_embeddings))
    if absent:
        raise ValueError(f"{len(absent)} prompt embeddings listed in the index are missing, e.g. {absent[0]}")
    pairs = zip(prompt_index["volume_id"].astype(str), prompt_index["prompt_key"].astype(str))
    loaders = {volume_id: prompt_embeddings[key] for volume_id, key in pairs}
    return loaders, fingerprints[0]


def pad_embeddings(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate unpadded (L_i, d) embeddings into (b, L, d) float32 with exact-zero padding and a (b, L) mask.

    Accepts `PromptEmbedding`s, numpy arrays or tensors; the zero padding keeps the release's
    "embedding ≠ 0" mask convention valid.
    """
    if len(items) == 0:
        raise ValueError("pad_embeddings needs at least one item")
    rows = []
    for item in items:
        value = item.embeds if isinstance(item, PromptEmbedding) else item
        tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        if tensor.ndim != 2 or tensor.shape[0] < 1:
            raise ValueError(f"each item must be (L, d) with L ≥ 1, got {tuple(tensor.shape)}")
        rows.append(tensor.float())
    dims = {row.shape[1] for row in rows}
    if len(dims) != 1:
        raise ValueError(f"items have different embedding sizes {sorted(dims)}")
    length = max(row.shape[0] for row in rows)
    embeds = torch.zeros(len(rows), length, dims.pop())
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return embeds, mask
