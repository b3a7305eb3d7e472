"""The cohort after data quality: patient-level splits (`cohort.split`) and model grids (`cohort.grids`).

Submodules are imported on first use so that the split pipeline does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GridSpec": "grids",
    "GridVolume": "grids",
    "make_grid": "grids",
    "scale_hu": "grids",
    "split_patients": "split",
    "stratified_assignment": "split",
    "summarise_splits": "split",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
