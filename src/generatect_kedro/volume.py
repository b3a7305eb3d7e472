"""The one volume convention used everywhere in the project.

On disk (NIfTI) a volume is int16 HU with a real affine mapping voxel indices (i, j, k) to RAS+
millimetres, the convention of NIfTI, nibabel, ITK-SNAP and 3D Slicer. DICOM patient coordinates are
LPS+, so the DICOM affine has its x and y rows negated. Ingestion reorients every volume to the closest
canonical RAS orientation, so that for every stored volume i runs from the patient's left to right (R+),
j from posterior to anterior (A+) and k from inferior to superior (S+).

In memory the models use (D, H, W) = (slice, row, column) in radiological display order: D from inferior
to superior, H from anterior (top of the image) to posterior, W from the patient's right (image left) to
the patient's left. This is how a standard axial DICOM slice is displayed. `to_dhw` / `from_dhw` are the
only places this transposition happens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

HU_MIN_STORABLE = -32768
HU_MAX_STORABLE = 32767


@dataclass
class HUVolume:
    """int16 HU voxels in NIfTI (i, j, k) order plus the voxel→RAS+ mm affine.

    `meta` carries non-identifying facts (manufacturer, slope, intercept…) that travel with the volume.
    """

    data: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise ValueError(f"an HU volume is 3-D, got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"an affine is 4x4, got {self.affine.shape}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    def voxel_sha256(self) -> str:
        """A content hash of voxels and geometry, independent of file compression."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.data.astype("<i2")).tobytes())
        digest.update(np.round(self.affine, 6).astype("<f8").tobytes())
        return digest.hexdigest()


def hu_to_int16(hu: np.ndarray) -> np.ndarray:
    """Round float HU to int16 without wrap-around."""
    return np.clip(np.rint(hu), HU_MIN_STORABLE, HU_MAX_STORABLE).astype(np.int16)


def canonical(volume: HUVolume) -> HUVolume:
    """Reorient to the closest canonical RAS+ orientation (voxels flipped/permuted, never resampled)."""
    image = nib.Nifti1Image(volume.data, volume.affine)
    image = nib.as_closest_canonical(image)
    return HUVolume(np.asarray(image.dataobj), image.affine, dict(volume.meta))


def to_dhw(data_ijk: np.ndarray) -> np.ndarray:
    """Canonical RAS (i, j, k) array → (D, H, W) display order (see module docstring)."""
    return np.ascontiguousarray(np.transpose(data_ijk, (2, 1, 0))[:, ::-1, ::-1])


def from_dhw(data_dhw: np.ndarray) -> np.ndarray:
    """(D, H, W) display order → canonical RAS (i, j, k) array; inverse of `to_dhw`."""
    return np.ascontiguousarray(np.transpose(data_dhw[:, ::-1, ::-1], (2, 1, 0)))


def affine_from_spacing(
    spacing_ijk: tuple[float, float, float], origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """A canonical RAS+ affine for given voxel spacing (used for generated volumes and CT-RATE)."""
    affine = np.diag([*map(float, spacing_ijk), 1.0])
    affine[:3, 3] = origin_ras
    return affine
