"""Kedro dataset for model weights: a ``dict[str, torch.Tensor]`` state dict as one ``.safetensors`` file.

No pickle (safe to load from anywhere), and the bytes written are exactly
``safetensors.torch.save(state_dict, metadata)``, so a consumer that serialises the same dict the same way
(the registry does) gets the same sha256 as the file on disk. Writes are atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError
from safetensors import safe_open

from generatect_kedro.utils.atomic import atomic_write_bytes
from generatect_kedro.utils.safetensors_bytes import dumps_torch

__all__ = ["SafetensorsModelDataset", "cpu_state_dict", "state_dict_bytes"]


def cpu_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict (keys under ``prefix``), ready for this dataset: training
    may go on moving the module's own tensors."""
    return {f"{prefix}{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def state_dict_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The canonical safetensors serialisation of a state dict (contiguous CPU tensors)."""
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise DatasetError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[str(key)] = value.detach().to("cpu").contiguous()
    return dumps_torch(tensors, metadata)


class SafetensorsModelDataset(AbstractDataset[dict[str, torch.Tensor], dict[str, torch.Tensor]]):
    """Save/load a state dict; ``metadata`` (optional, strings) is written into the file header."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        if filepath.startswith("file://"):
            filepath = filepath[len("file://"):]
        if "://" in filepath:
            raise DatasetError(f"SafetensorsModelDataset writes local files only, got {filepath!r}")
        self._filepath = PurePosixPath(filepath)
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "metadata": self._metadata}

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def load(self) -> dict[str, torch.Tensor]:
        path = Path(self._filepath)
        if not path.is_file():
            raise DatasetError(f"no weights at {path}")
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}

    def save(self, data: Mapping[str, torch.Tensor]) -> None:
        atomic_write_bytes(self._filepath, state_dict_bytes(data, self._metadata))
