"""HU volume → model grid (D, H, W) in [-1, 1], with the grid's own affine so geometry is never lost.

Two resize modes (parameter `resize_mode`):

* ``fixed_grid`` — the released GenerateCT preprocessing: every axial slice is resized bilinearly (with
  antialiasing, as PIL does) to H×W, then the stack is interpolated linearly to exactly D slices
  (``F.interpolate``, ``align_corners=False``). The field of view is the whole scan; the voxel size of the
  grid differs per volume.
* ``spacing_first`` — resample to a fixed voxel size first (e.g. 1.5 × 0.75 × 0.75 mm, as CT-CLIP does for
  CT-RATE; Gaussian pre-filter where downsampling), then centre-crop/pad with air to the grid. Every grid
  voxel has the same physical size; the field of view is D·sd × H·sh × W·sw mm around the scan centre.

HU are clipped to the window first and mapped linearly onto [-1, 1] (÷1000 for [-1000, 1000]).
`GridVolume.affine` maps voxel indices (i, j, k) of ``from_dhw(volume)`` to RAS+ mm, the same convention
as `HUVolume`; so ``HUVolume(from_dhw(volume) * 1000, affine)`` is a valid image of the grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from generatect_kedro.volume import HUVolume, to_dhw

RESIZE_MODES = ("fixed_grid", "spacing_first")


@dataclass
class GridVolume:
    """A model grid: `volume` (D, H, W) floats in [-1, 1]; `affine` (i, j, k) of from_dhw(volume) → RAS+ mm."""

    volume: np.ndarray
    affine: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.volume.ndim != 3 or self.affine.shape != (4, 4):
            raise ValueError(f"a grid is (D, H, W) with a 4x4 affine, got {self.volume.shape} and {self.affine.shape}")

    @property
    def spacing_dhw(self) -> tuple[float, float, float]:
        """Voxel size in mm along D, H, W."""
        si, sj, sk = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(sk), float(sj), float(si)


@dataclass(frozen=True)
class GridSpec:
    """Grid shape (D, H, W) and, for `spacing_first`, the voxel size in mm along (D, H, W)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        d, h, w = self.shape
        if min(self.shape) < 1 or d % 2 != 1:
            raise ValueError(f"grid depth must be 1 + 2k (first slice alone, then 2-slice tubelets), got {self.shape}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> GridSpec:
        spacing = params.get("spacing_mm")
        return cls(tuple(int(v) for v in params["shape"]), tuple(float(v) for v in spacing) if spacing else None)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        d, h, w = self.shape
        return w, h, d


def scale_hu(hu: np.ndarray, window: Sequence[float] = (-1000.0, 1000.0)) -> np.ndarray:
    """Clip to the HU window and map it linearly onto [-1, 1] (float32)."""
    low, high = float(window[0]), float(window[1])
    if high <= low:
        raise ValueError(f"HU window must be increasing, got {window}")
    clipped = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    return (clipped - (low + high) / 2) / ((high - low) / 2)


def index_map(
    shape_ijk: Sequence[int],
    spacing_ijk: Sequence[float],
    spec: GridSpec,
    mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per axis with input_index = scale · grid_index + offset (i, j, k order)."""
    n_in = np.asarray(shape_ijk, dtype=np.float64)
    n_out = np.asarray(spec.shape_ijk, dtype=np.float64)
    if mode == "fixed_grid":
        scale = n_in / n_out  # align_corners=False: voxel centres spread over the same extent
        return scale, 0.5 * scale - 0.5
    if mode == "spacing_first":
        if spec.spacing_mm is None:
            raise ValueError("resize_mode spacing_first needs spacing_mm for every grid")
        d, h, w = spec.spacing_mm
        scale = np.array([w, h, d], dtype=np.float64) / np.asarray(spacing_ijk, dtype=np.float64)
        return scale, (n_in - 1) / 2 - scale * (n_out - 1) / 2  # centres coincide
    raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")


def grid_affine(affine: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The grid's voxel → RAS+ affine: the source affine composed with the index map."""
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(scale)
    to_source[:3, 3] = offset
    return np.asarray(affine, dtype=np.float64) @ to_source


def grid_spacing_dhw(shape_ijk: Sequence[int], spacing_ijk: Sequence[float], spec: GridSpec, mode: str) -> tuple[float, float, float]:
    """Voxel size (mm) of the grid along D, H, W, from the source header alone (for the grid index)."""
    scale, _ = index_map(shape_ijk, spacing_ijk, spec, mode)
    si, sj, sk = scale * np.asarray(spacing_ijk, dtype=np.float64)
    return float(sk), float(sj), float(si)


def _fixed_grid(scaled_ijk: np.ndarray, spec: GridSpec) -> np.ndarray:
    d, h, w = spec.shape
    stack = torch.from_numpy(to_dhw(scaled_ijk))[:, None]  # (slices, 1, H_in, W_in)
    slices = F.interpolate(stack, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    volume = F.interpolate(slices.permute(1, 0, 2, 3)[None], size=(d, h, w), mode="trilinear", align_corners=False)
    return volume[0, 0].numpy()


def _resample_axis(x: np.ndarray, axis: int, positions: np.ndarray, fill: float) -> np.ndarray:
    """Linear interpolation of `x` along `axis` at fractional `positions`; outside the voxels → `fill`."""
    n = x.shape[axis]
    inside = (positions >= -0.5) & (positions <= n - 0.5)
    p = np.clip(positions, 0, n - 1)
    lo = np.floor(p).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = len(positions)
    weight = (p - lo).astype(np.float32).reshape(shape)
    out = np.take(x, lo, axis=axis) * (1 - weight) + np.take(x, hi, axis=axis) * weight
    mask = inside.reshape(shape)
    return np.where(mask, out, np.float32(fill)).astype(np.float32)


def _spacing_first(scaled_ijk: np.ndarray, scale: np.ndarray, offset: np.ndarray, spec: GridSpec) -> np.ndarray:
    x = scaled_ijk
    for axis in np.argsort(-scale):  # shrink the most-reduced axis first: less memory and work
        if scale[axis] > 1:
            x = gaussian_filter1d(x, sigma=(scale[axis] - 1) / 2, axis=int(axis), mode="nearest")
        positions = scale[axis] * np.arange(spec.shape_ijk[axis]) + offset[axis]
        x = _resample_axis(x, int(axis), positions, fill=-1.0)
    return to_dhw(x)


def make_grid(
    volume: HUVolume,
    spec: GridSpec,
    *,
    mode: str = "fixed_grid",
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    dtype: str = "float32",
) -> GridVolume:
    """The model grid of one HU volume (see the module docstring for the two modes)."""
    scaled = scale_hu(volume.data, hu_window)
    scale, offset = index_map(volume.shape, volume.spacing, spec, mode)
    grid = _fixed_grid(scaled, spec) if mode == "fixed_grid" else _spacing_first(scaled, scale, offset, spec)
    grid = np.clip(grid, -1.0, 1.0).astype(np.dtype(dtype))
    meta = {
        "layout": "DHW",
        "affine_axes": "ijk_of_from_dhw",
        "resize_mode": mode,
        "hu_window": f"{float(hu_window[0])},{float(hu_window[1])}",
        "source_shape_ijk": ",".join(map(str, volume.shape)),
    }
    return GridVolume(np.ascontiguousarray(grid), grid_affine(volume.affine, scale, offset), meta)
