"""Byte-stable safetensors: the same tensors and metadata always give the same file (DVC and sha256 rely on it).

safetensors writes its `__metadata__` map in hash order, which changes between processes; `canonical`
rewrites the JSON header with sorted keys at the same length, leaving the data section untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def canonical(payload: bytes) -> bytes:
    length = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(text) > length:  # cannot happen for a re-ordering of the same JSON; never corrupt a file
        return payload
    return payload[:8] + text.ljust(length, b" ") + payload[8 + length :]


def dumps_numpy(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> bytes:
    from safetensors.numpy import save

    return canonical(save(dict(tensors), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None))


def dumps_torch(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> bytes:
    from safetensors.torch import save

    return canonical(save(dict(tensors), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None))
