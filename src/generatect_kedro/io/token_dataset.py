"""Kedro dataset for one volume's cached CT-ViT token ids: ``ids`` int32 (t, h, w) in a ``.safetensors`` file.

The transformer stage reads these instead of re-encoding every volume through the CT-ViT at every step (the
released trainer does). String metadata records which registered CT-ViT made them (name, version, weights
sha256) and the codebook size, so a consumer can refuse tokens from another model. Writes are atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from safetensors import safe_open

from generatect_kedro.utils.atomic import atomic_write_bytes
from generatect_kedro.utils.safetensors_bytes import dumps_numpy

__all__ = ["TokenGrid", "TokenGridDataset"]


@dataclass
class TokenGrid:
    """Codebook ids of one volume, (t, h, w) int32, plus string metadata (model version, sha256…)."""

    ids: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids)
        if ids.ndim != 3:
            raise ValueError(f"token ids are (t, h, w), got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            raise ValueError("token ids must lie in [0, 2**31)")
        self.ids = np.ascontiguousarray(ids.astype(np.int32))
        self.meta = {str(k): str(v) for k, v in self.meta.items()}

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.ids.shape)


class TokenGridDataset(AbstractDataset[TokenGrid, TokenGrid]):
    """Save/load a `TokenGrid` (a dict with ``ids`` and optional ``meta`` is accepted on save)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        if filepath.startswith("file://"):
            filepath = filepath[len("file://"):]
        if "://" in filepath:
            raise DatasetError(f"TokenGridDataset writes local files only, got {filepath!r}")
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def load(self) -> TokenGrid:
        path = Path(self._filepath)
        if not path.is_file():
            raise DatasetError(f"no token grid at {path}")
        with safe_open(str(path), framework="numpy") as handle:
            return TokenGrid(handle.get_tensor("ids"), dict(handle.metadata() or {}))

    def save(self, data: TokenGrid | Mapping[str, Any]) -> None:
        if not isinstance(data, TokenGrid):
            data = TokenGrid(np.asarray(data["ids"]), dict(data.get("meta") or {}))
        atomic_write_bytes(self._filepath, dumps_numpy({"ids": data.ids}, metadata=data.meta))
