"""Previews of CT volumes: tri-planar views (axial / coronal / sagittal) in clinical HU windows.

Volumes are (D, H, W) in the project's display order (``volume.py``): D inferior → superior, H anterior →
posterior, W patient right → left. Coronal and sagittal views are flipped so superior is up, and stretched
to the voxel spacing so anisotropic grids (the demo's 18 mm slices) are not squashed. Figures are built
with matplotlib's object API (no pyplot state, Agg canvas), so they work in training processes and tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["WINDOWS", "apply_window", "triplanar_figure", "triplanar_slices"]

# (level, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}


def apply_window(hu: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """HU → [0, 1] display values for a named window or a (level, width) pair."""
    level, width = WINDOWS[window] if isinstance(window, str) else window
    low = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / float(width), 0.0, 1.0)


def triplanar_slices(volume_dhw: np.ndarray, center: Sequence[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial (H, W), coronal (D, W) and sagittal (D, H) planes through ``center`` (default: the middle).

    Coronal and sagittal planes have superior at the top (row 0 = last slice).
    """
    volume = np.asarray(volume_dhw)
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    d, h, w = center if center is not None else tuple(s // 2 for s in volume.shape)
    return volume[d], volume[::-1, h, :], volume[::-1, :, w]


def triplanar_figure(rows: Mapping[str, np.ndarray], *, spacing_dhw: Sequence[float] = (1.0, 1.0, 1.0),
                     windows: Sequence[str] = ("lung", "mediastinal"), title: str | None = None):
    """A matplotlib Figure: one row per (volume, window), columns axial / coronal / sagittal.

    ``rows`` maps labels (e.g. "input", "recon") to HU volumes (D, H, W) of the same shape; the rows for
    each window are stacked, so input and reconstruction sit above each other.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("nothing to draw")
    shapes = {np.asarray(v).shape for v in rows.values()}
    if len(shapes) != 1:
        raise ValueError(f"volumes differ in shape: {sorted(shapes)}")
    sd, sh, sw = (float(s) for s in spacing_dhw)
    aspects = (sh / sw, sd / sw, sd / sh)  # axial (H×W), coronal (D×W), sagittal (D×H): row / column mm
    n_rows = len(rows) * len(windows)
    figure = Figure(figsize=(7.5, 2.4 * n_rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, 3, squeeze=False)
    row = 0
    for window in windows:
        for label, volume in rows.items():
            planes = triplanar_slices(np.asarray(volume, dtype=np.float32))
            for col, (plane, aspect, plane_name) in enumerate(zip(planes, aspects, ("axial", "coronal",
                                                                                   "sagittal"))):
                ax = axes[row, col]
                ax.imshow(apply_window(plane, window), cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(plane_name, fontsize=9)
                if col == 0:
                    ax.set_ylabel(f"{label}\n{window}", fontsize=8)
            row += 1
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
