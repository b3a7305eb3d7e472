"""Kedro datasets for cached prompt embeddings: one ``.safetensors`` file per unique prompt.

`PromptEmbeddingDataset` is one file: ``embeds`` (L, d) float16/float32, unpadded, and ``mask`` (L,) bool, with
string metadata (encoder fingerprint, max_length, prompt sha256…) so a consumer can refuse embeddings from
another encoder. It is the per-partition dataset of a ``PartitionedDataset`` whose partition names are prompt
keys (hashes), so no report text ends up in file names. Writes are atomic and byte-stable.

`PromptEmbeddingCacheDataset` is a read-only view of the same folder that returns each partition's metadata
(header only, no tensors) and ``{}`` when the folder does not exist yet. The embedding node takes it as an input
to skip prompts already encoded by the same encoder: a ``PartitionedDataset`` cannot be that input because it
raises on an empty folder (first run) and would load every tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from safetensors import safe_open

from generatect_kedro.utils.atomic import atomic_write_bytes
from generatect_kedro.utils.safetensors_bytes import dumps_numpy

LOG = logging.getLogger(__name__)

__all__ = ["PromptEmbedding", "PromptEmbeddingCacheDataset", "PromptEmbeddingDataset", "read_embedding_meta"]

STORAGE_DTYPES = ("float16", "float32")


@dataclass
class PromptEmbedding:
    """One prompt's token embeddings (L, d), unpadded, its mask (L,) and string metadata."""

    embeds: np.ndarray
    mask: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        embeds = _numpy(self.embeds)
        if embeds.ndim != 2 or embeds.shape[0] < 1:
            raise ValueError(f"prompt embeddings are (L, d) with L ≥ 1, got shape {embeds.shape}")
        if embeds.dtype.name not in STORAGE_DTYPES:
            raise ValueError(f"prompt embeddings must be float16 or float32, got {embeds.dtype}")
        mask = np.ones(embeds.shape[0], dtype=bool) if self.mask is None else _numpy(self.mask)
        if mask.shape != (embeds.shape[0],):
            raise ValueError(f"mask must be ({embeds.shape[0]},), got {mask.shape}")
        self.embeds = np.ascontiguousarray(embeds)
        self.mask = np.ascontiguousarray(mask.astype(bool))
        self.meta = {str(k): str(v) for k, v in self.meta.items()}

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])


def _numpy(value: Any) -> np.ndarray:
    """numpy from numpy or a torch tensor (any device) without importing torch here."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _local(filepath: str, kind: str) -> PurePosixPath:
    if filepath.startswith("file://"):
        filepath = filepath[len("file://"):]
    if "://" in filepath:
        raise DatasetError(f"{kind} reads and writes local files only, got {filepath!r}")
    return PurePosixPath(filepath)


def read_embedding_meta(path: str | Path) -> dict[str, str]:
    """A prompt-embedding file's metadata without reading its tensors (plus `n_tokens`/`dim` from the header)."""
    with safe_open(str(path), framework="numpy") as handle:
        meta = dict(handle.metadata() or {})
        if "embeds" in handle.keys():
            shape = handle.get_slice("embeds").get_shape()
            meta.setdefault("n_tokens", str(shape[0]))
            meta.setdefault("dim", str(shape[1]))
    return meta


class PromptEmbeddingDataset(AbstractDataset[PromptEmbedding, PromptEmbedding]):
    """Save/load one `PromptEmbedding` (a dict with ``embeds``, optional ``mask`` and ``meta`` is accepted)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = _local(filepath, "PromptEmbeddingDataset")
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def load(self) -> PromptEmbedding:
        path = Path(self._filepath)
        if not path.is_file():
            raise DatasetError(f"no prompt embedding at {path}")
        with safe_open(str(path), framework="numpy") as handle:
            return PromptEmbedding(handle.get_tensor("embeds"), handle.get_tensor("mask"),
                                   dict(handle.metadata() or {}))

    def save(self, data: PromptEmbedding | Mapping[str, Any]) -> None:
        if not isinstance(data, PromptEmbedding):
            data = PromptEmbedding(data["embeds"], data.get("mask"), dict(data.get("meta") or {}))
        payload = dumps_numpy({"embeds": data.embeds, "mask": data.mask}, metadata=data.meta)
        atomic_write_bytes(self._filepath, payload)


class PromptEmbeddingCacheDataset(AbstractDataset[dict[str, dict[str, str]], None]):
    """Read-only: ``{prompt_key: metadata}`` for every file in `path`; ``{}`` when the folder is missing or empty."""

    def __init__(self, path: str, filename_suffix: str = ".safetensors",
                 metadata: dict[str, Any] | None = None) -> None:
        self._path = _local(path, "PromptEmbeddingCacheDataset")
        self._suffix = filename_suffix
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "filename_suffix": self._suffix}

    def _exists(self) -> bool:
        return True  # an absent cache is an empty one

    def load(self) -> dict[str, dict[str, str]]:
        folder = Path(self._path)
        if not folder.is_dir():
            return {}
        out = {}
        for file in sorted(folder.glob(f"*{self._suffix}")):
            if not file.is_file() or file.name.startswith("."):  # skips atomic-write temporaries
                continue
            try:
                out[file.name[: -len(self._suffix)] if self._suffix else file.name] = read_embedding_meta(file)
            except Exception as exc:  # a corrupt file is re-encoded, never trusted
                LOG.warning("prompt embedding cache: ignoring unreadable %s (%s)", file.name, exc)
        return out

    def save(self, data: Any) -> None:
        raise DatasetError("PromptEmbeddingCacheDataset is read-only; the embeddings are written through the "
                           "PartitionedDataset at the same path")
