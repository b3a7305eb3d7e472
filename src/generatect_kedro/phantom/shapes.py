"""Vectorised shape primitives on a millimetre grid, shared by the anatomy and the abnormalities.

Everything is expressed in patient millimetres around the body centre, so a phantom looks the same at
any matrix or spacing: x from the patient's right to left (W), y from anterior to posterior (H), z from
inferior to superior (D). Arrays broadcast as (D, 1, 1), (1, H, 1), (1, 1, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates in mm of a (D, H, W) volume centred on the body centre."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (slice, row, column) spacing in mm

    @property
    def z(self) -> np.ndarray:
        return _axis(self.shape[0], self.spacing[0]).reshape(-1, 1, 1)

    @property
    def y(self) -> np.ndarray:
        return _axis(self.shape[1], self.spacing[1]).reshape(1, -1, 1)

    @property
    def x(self) -> np.ndarray:
        return _axis(self.shape[2], self.spacing[2]).reshape(1, 1, -1)

    @property
    def min_inplane(self) -> float:
        return float(min(self.spacing[1], self.spacing[2]))

    def snap(self, point_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """The voxel centre nearest to a point, so that a small object always covers at least one voxel."""
        x, y, z = point_xyz
        snapped = []
        for value, n, step in ((x, self.shape[2], self.spacing[2]), (y, self.shape[1], self.spacing[1]),
                               (z, self.shape[0], self.spacing[0])):
            index = np.clip(np.rint(value / step + (n - 1) / 2), 0, n - 1)
            snapped.append(float((index - (n - 1) / 2) * step))
        return snapped[0], snapped[1], snapped[2]

    def visible_radius(self, radius_mm: float) -> float:
        """A radius no smaller than about half the largest voxel side: thin objects then never vanish."""
        return max(radius_mm, 0.55 * max(self.spacing))


def _axis(n: int, step: float) -> np.ndarray:
    return ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(step)).astype(np.float32)


def ellipsoid(grid: Grid, center_xyz, semi_axes_xyz) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid (D, H, W)."""
    cx, cy, cz = center_xyz
    ax, ay, az = semi_axes_xyz
    return ((grid.x - cx) / ax) ** 2 + ((grid.y - cy) / ay) ** 2 + ((grid.z - cz) / az) ** 2 <= 1.0


def ellipse_radius2(grid: Grid, center_xy, semi_axes_xy) -> np.ndarray:
    """Squared normalised in-plane radius (1, H, W); <= 1 inside the ellipse."""
    cx, cy = center_xy
    ax, ay = semi_axes_xy
    return ((grid.x - cx) / ax) ** 2 + ((grid.y - cy) / ay) ** 2


def sphere(grid: Grid, center_xyz, radius: float) -> np.ndarray:
    return ellipsoid(grid, center_xyz, (radius, radius, radius))


def soft_sphere(grid: Grid, center_xyz, radius: float) -> np.ndarray:
    """Fraction of each voxel a sphere covers, approximated by a linear edge one voxel wide.

    Small lesions then show partial-volume averaging as on a real scanner instead of one hard voxel.
    """
    cx, cy, cz = center_xyz
    distance = np.sqrt((grid.x - cx) ** 2 + (grid.y - cy) ** 2 + (grid.z - cz) ** 2)
    half_voxel = 0.5 * grid.min_inplane
    return np.clip((radius + half_voxel - distance) / (2 * half_voxel), 0.0, 1.0).astype(np.float32)


def tube(grid: Grid, start_xyz, end_xyz, radius: float) -> np.ndarray:
    """Voxels within `radius` mm of the segment start→end (a vessel, airway, lead or wire)."""
    return segment_distance(grid, start_xyz, end_xyz) <= radius


def segment_distance(grid: Grid, start_xyz, end_xyz) -> np.ndarray:
    """Distance in mm from every voxel centre to a segment; computed only inside its bounding box."""
    a = np.asarray(start_xyz, np.float32)
    b = np.asarray(end_xyz, np.float32)
    distance = np.full(grid.shape, np.inf, dtype=np.float32)
    margin = 40.0
    lo, hi = np.minimum(a, b) - margin, np.maximum(a, b) + margin
    zs, ys, xs = (_index_range(axis, lo[k], hi[k]) for axis, k in ((grid.z.ravel(), 2), (grid.y.ravel(), 1),
                                                                   (grid.x.ravel(), 0)))
    if zs.stop <= zs.start or ys.stop <= ys.start or xs.stop <= xs.start:
        return distance
    x = grid.x[:, :, xs] - a[0]
    y = grid.y[:, ys, :] - a[1]
    z = grid.z[zs, :, :] - a[2]
    d = b - a
    length2 = float(d @ d) or 1.0
    t = np.clip((x * d[0] + y * d[1] + z * d[2]) / length2, 0.0, 1.0)
    distance[zs, ys, xs] = np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)
    return distance


def _index_range(coords: np.ndarray, low: float, high: float) -> slice:
    inside = np.nonzero((coords >= low) & (coords <= high))[0]
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)


def polyline(grid: Grid, points_xyz, radius: float) -> np.ndarray:
    """Union of tubes along consecutive points."""
    mask = np.zeros(grid.shape, dtype=bool)
    for start, end in zip(points_xyz[:-1], points_xyz[1:], strict=False):
        mask |= tube(grid, start, end, radius)
    return mask


def smooth_field(rng: np.random.Generator, grid: Grid, feature_mm: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance random field whose blobs are about `feature_mm` across.

    Drawn on a coarse lattice and linearly interpolated (three small matrix products): cheap, and
    independent of the voxel size.
    """
    coarse_shape = [max(2, int(np.ceil(n * s / feature_mm)) + 1) for n, s in zip(grid.shape, grid.spacing, strict=True)]
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, n in enumerate(grid.shape):
        field = np.moveaxis(np.tensordot(_linear_weights(n, coarse_shape[axis]), field, axes=(1, axis)), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-6)


def _linear_weights(n: int, coarse: int) -> np.ndarray:
    """(n, coarse) matrix that linearly interpolates `coarse` evenly spaced samples onto `n` points."""
    position = np.linspace(0.0, coarse - 1.0, n)
    low = np.minimum(np.floor(position).astype(int), coarse - 2)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((n, coarse), dtype=np.float32)
    weights[np.arange(n), low] = 1.0 - frac
    weights[np.arange(n), low + 1] = frac
    return weights


def patch_mask(rng: np.random.Generator, grid: Grid, region: np.ndarray, fraction: float,
               feature_mm: float = 25.0) -> np.ndarray:
    """Random blobs covering about `fraction` of `region` (patchy disease inside a lobe)."""
    if not region.any():
        return region
    field = smooth_field(rng, grid, feature_mm)
    threshold = np.quantile(field[region], 1.0 - fraction)
    return region & (field >= threshold)
