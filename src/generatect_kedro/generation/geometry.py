"""Where a generated voxel sits: spacing and orientation of generated volumes.

A generated volume is a full-res *model grid* (the cascade's output), so its voxel is a full-res grid voxel.
Preprocessing records every training volume's grid voxel size in ``grid_index.csv``
(``fullres_spacing_d/h/w``, mm along D, H, W); with ``resize_mode: spacing_first`` they are all equal, with
``fixed_grid`` they differ per scan. By default a generated volume gets the cohort's **median** full-res
voxel size per axis (the voxel the models saw most), unless ``generation.geometry.spacing_mm`` sets it.
More slices than the training depth extend the volume at that voxel size; they do not stretch it.

The array is written in the project's one convention (`volume.py`): ``from_dhw`` (canonical RAS+ i, j, k)
with a diagonal affine centred on the origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from generatect_kedro.volume import affine_from_spacing

__all__ = ["OutputGeometry", "cohort_median_spacing", "geometry_from_params"]

SPACING_COLUMNS = ("fullres_spacing_w", "fullres_spacing_h", "fullres_spacing_d")  # i, j, k = W, H, D


@dataclass(frozen=True)
class OutputGeometry:
    """Voxel size in mm along (i, j, k) = (x, y, z) of the RAS+ array, and where it came from."""

    spacing_mm: tuple[float, float, float]
    source: str  # "cohort median" | "parameters"
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0 or not all(np.isfinite(self.spacing_mm)):
            raise ValueError(f"generation spacing must be three positive mm values (x, y, z), got {self.spacing_mm}")
        if self.orientation != "RAS":
            raise ValueError(f"generated volumes are canonical RAS+ (volume.py); got orientation {self.orientation!r}")

    def affine(self, shape_ijk: Sequence[int]) -> np.ndarray:
        """Diagonal RAS+ affine with the volume's centre at (0, 0, 0) mm."""
        spacing = np.asarray(self.spacing_mm, dtype=np.float64)
        origin = -0.5 * (np.asarray(shape_ijk, dtype=np.float64) - 1.0) * spacing
        return affine_from_spacing(tuple(spacing), tuple(origin))

    def record(self) -> dict[str, Any]:
        """The sidecar's ``geometry`` section."""
        return {"spacing_mm": [float(v) for v in self.spacing_mm], "orientation": self.orientation,
                "source": self.source}


def cohort_median_spacing(grid_index: Any) -> tuple[float, float, float]:
    """Median full-res grid voxel size (x, y, z) mm over the cohort's ``grid_index`` table."""
    missing = [c for c in SPACING_COLUMNS if c not in getattr(grid_index, "columns", ())]
    if missing:
        raise ValueError(f"grid_index lacks {missing}; re-run the preprocessing pipeline")
    values = grid_index[list(SPACING_COLUMNS)].astype(float)
    if values.empty:
        raise ValueError("grid_index is empty: no training geometry to take the median of")
    return tuple(float(v) for v in values.median(axis=0))  # type: ignore[return-value]


def geometry_from_params(params: Mapping[str, Any] | None, grid_index: Any = None) -> OutputGeometry:
    """``generation.geometry``: ``spacing_mm: [x, y, z]`` (mm) wins; else the cohort median; else an error."""
    p = dict(params or {})
    orientation = str(p.get("orientation", "RAS"))
    if p.get("spacing_mm") is not None:
        return OutputGeometry(tuple(float(v) for v in p["spacing_mm"]), "parameters", orientation)
    if grid_index is None or len(grid_index) == 0:
        raise ValueError("no output geometry: set generation.geometry.spacing_mm or provide the cohort's "
                         "grid_index (kedro run --pipelines preprocessing)")
    return OutputGeometry(cohort_median_spacing(grid_index), "cohort median", orientation)
