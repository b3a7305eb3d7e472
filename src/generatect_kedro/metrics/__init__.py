"""Image-quality metrics shared by training validation and evaluation (HU-based PSNR/SSIM, baselines)."""

from generatect_kedro.metrics.image_quality import (
    DEFAULT_HU_WINDOW,
    hu_data_range,
    mean_volume,
    mean_volume_baseline_psnr,
    psnr_hu,
    ssim_hu,
    to_hu,
)

__all__ = [
    "DEFAULT_HU_WINDOW",
    "hu_data_range",
    "mean_volume",
    "mean_volume_baseline_psnr",
    "psnr_hu",
    "ssim_hu",
    "to_hu",
]
