"""Reconstruction quality in Hounsfield units: PSNR, SSIM and the trivial mean-volume baseline.

Model grids hold HU clipped to a window and mapped onto [-1, 1] (÷1000 for the default [-1000, 1000]).
Metrics are computed in HU with the window's width as the data range (2000 HU by default), so numbers
compare across grid sizes and with the CT literature rather than with [-1, 1] floats.

* PSNR: per volume, ``10·log10(range² / MSE_HU)``, capped at ``max_db`` (identical volumes give the cap,
  not ∞, so the value can be logged and averaged).
* SSIM: torchmetrics' Gaussian SSIM (σ 1.5, 11-voxel kernel, shrunk for tiny grids). ``mode="slice"``
  (the default) averages 2-D SSIM over the axial slices of each volume — grids are anisotropic (the demo's
  slices are 18 mm apart), so a 3-D window would mix very different distances; ``mode="volume"`` runs
  the 3-D SSIM instead.
* Baseline: the PSNR of predicting the voxel-wise mean training volume for every validation volume. A
  model that cannot beat it has learned nothing volume-specific.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_HU_WINDOW",
    "hu_data_range",
    "mean_volume",
    "mean_volume_baseline_psnr",
    "psnr_hu",
    "ssim_hu",
    "to_hu",
]

DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
MAX_PSNR_DB = 100.0


def hu_data_range(hu_window: Sequence[float] = DEFAULT_HU_WINDOW) -> float:
    low, high = float(hu_window[0]), float(hu_window[1])
    if high <= low:
        raise ValueError(f"HU window must be increasing, got {hu_window}")
    return high - low


def to_hu(grid: Tensor, hu_window: Sequence[float] = DEFAULT_HU_WINDOW, *, clip: bool = True) -> Tensor:
    """[-1, 1] grid values → HU (float32); ``clip`` first clips to [-1, 1] as every written volume is."""
    low = float(hu_window[0])
    x = grid.float()
    if clip:
        x = x.clamp(-1.0, 1.0)
    return low + (x + 1.0) * 0.5 * hu_data_range(hu_window)


def _as_batch(x: Tensor) -> Tensor:
    """(D, H, W), (B, D, H, W) or (B, 1, D, H, W) → (B, D, H, W)."""
    if x.ndim == 3:
        return x.unsqueeze(0)
    if x.ndim == 5:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim != 4:
        raise ValueError(f"expected (D,H,W), (B,D,H,W) or (B,1,D,H,W), got shape {tuple(x.shape)}")
    return x


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _as_batch(pred).float(), _as_batch(target).float()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred, target


def psnr_hu(pred_hu: Tensor, target_hu: Tensor, *, data_range: float = 2000.0,
            max_db: float = MAX_PSNR_DB) -> Tensor:
    """Per-volume PSNR in dB (B,) of HU volumes; identical volumes give ``max_db``."""
    pred, target = _check_pair(pred_hu, target_hu)
    mse = (pred - target).pow(2).flatten(1).mean(dim=1).double()
    psnr = 10.0 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / mse)
    return psnr.clamp(max=max_db).nan_to_num(nan=max_db, posinf=max_db).float()


def _kernel_size(sizes: Iterable[int], wanted: int = 11) -> int:
    """Largest odd kernel ≤ wanted whose reflect padding fits every axis (needs pad < size)."""
    smallest = min(sizes)
    k = min(wanted, smallest if smallest % 2 else smallest - 1)
    while k > 1 and (k - 1) // 2 >= smallest:
        k -= 2
    return max(k, 3)


def _sigma(kernel_size: int) -> float:
    """The Gaussian σ whose torchmetrics kernel (2·int(3.5σ + 0.5) + 1 voxels) is ``kernel_size``: 11 → 1.5."""
    return 1.5 * (kernel_size - 1) / 10


def ssim_hu(pred_hu: Tensor, target_hu: Tensor, *, data_range: float = 2000.0, mode: str = "slice") -> Tensor:
    """Per-volume SSIM (B,) of HU volumes; ``mode`` "slice" (mean 2-D SSIM of axial slices) or "volume" (3-D)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    pred, target = _check_pair(pred_hu, target_hu)
    b, d, h, w = pred.shape
    if mode == "slice":
        k = _kernel_size((h, w))
        values = ssim(pred.reshape(b * d, 1, h, w), target.reshape(b * d, 1, h, w), sigma=_sigma(k),
                      kernel_size=k, data_range=float(data_range), reduction="none")
        return values.reshape(b, d).mean(dim=1)
    if mode == "volume":
        k = _kernel_size((d, h, w))
        return ssim(pred.unsqueeze(1), target.unsqueeze(1), sigma=_sigma(k), kernel_size=k,
                    data_range=float(data_range), reduction="none")
    raise ValueError(f"SSIM mode must be 'slice' or 'volume', got {mode!r}")


def mean_volume(volumes: Iterable[Tensor]) -> Tensor:
    """Voxel-wise mean of equally shaped volumes, streamed (float64 accumulation)."""
    total, count = None, 0
    for volume in volumes:
        v = volume.double()
        total = v.clone() if total is None else total.add_(v)
        count += 1
    if total is None:
        raise ValueError("cannot average zero volumes")
    return (total / count).float()


def mean_volume_baseline_psnr(mean_grid: Tensor, target_grids: Tensor,
                              hu_window: Sequence[float] = DEFAULT_HU_WINDOW) -> float:
    """Mean PSNR (dB) of predicting ``mean_grid`` (D,H,W) for each target grid (B,[1,]D,H,W); grids in [-1, 1]."""
    targets = _as_batch(target_grids)
    prediction = _as_batch(mean_grid).expand_as(targets)
    values = psnr_hu(to_hu(prediction, hu_window), to_hu(targets, hu_window), data_range=hu_data_range(hu_window))
    value = float(values.mean())
    return value if math.isfinite(value) else MAX_PSNR_DB
