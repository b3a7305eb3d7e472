"""Measurements read off an HU volume alone, the way a radiologist would, for any chest CT in display order.

They need no phantom ground truth, so they apply equally to generated volumes: e.g. to show that a
"cardiomegaly" prompt really widens the heart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def lung_mask(hu_dhw: np.ndarray, threshold_hu: float = -400.0) -> np.ndarray:
    """Air inside the body: low-density voxels not connected to the air around the patient."""
    low = hu_dhw < threshold_hu
    labels, _ = ndimage.label(low, structure=np.ones((3, 3, 3), bool))
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return low & ~np.isin(labels, border)


def cardiothoracic_ratio(hu_dhw: np.ndarray, spacing_dhw_mm) -> float:
    """Widest heart (mediastinal) width over widest inner thoracic (lung-to-lung) width, on axial slices.

    Only slices in the lower half of the lungs (heart level) and the anterior 60 % of the chest are used
    for the heart, so posterior effusions do not count as heart; a CTR above 0.5 means cardiomegaly.
    """
    column_mm = float(spacing_dhw_mm[2])
    lungs = lung_mask(hu_dhw)
    area = lungs.sum(axis=(1, 2))
    if area.max() == 0:
        raise ValueError("no lungs found in the volume")
    thoracic = 0.0
    heart = 0.0
    lung_slices = np.nonzero(area > 0.3 * area.max())[0]
    full_slices = np.nonzero(area > 0.6 * area.max())[0]  # not the thin rims of the costophrenic recesses
    heart_level = full_slices[full_slices <= np.median(lung_slices)]
    centre = hu_dhw.shape[2] / 2
    for d in lung_slices:
        rows = np.nonzero(lungs[d].any(axis=1))[0]
        anterior_limit = rows.min() + 0.6 * (rows.max() - rows.min())
        for h in rows:
            columns = np.nonzero(lungs[d, h])[0]
            thoracic = max(thoracic, (columns.max() - columns.min() + 1) * column_mm)
            right, left = columns[columns < centre], columns[columns >= centre]
            if d in heart_level and h <= anterior_limit and right.size and left.size:
                heart = max(heart, (left.min() - right.max() - 1) * column_mm)
    return heart / thoracic
