"""HU sanity of generated volumes: per-tissue statistics compared with the range the real volumes span.

FID/FVD say "the distribution moved", not what is wrong. A generated chest whose lungs sit at -300 HU, or
with no bone, is caught here with the reason (tissue and statistic). Tissue classes are plain HU bands:

    air          HU < -900
    lung         -900 <= HU < -500     (aerated parenchyma; emphysema and airways fall partly under air)
    fat          -150 <= HU <= -50
    soft_tissue  -50 < HU <= 100       (muscle, blood, organs, fluid; wider than the 20–80 "soft tissue"
                                        window so that fluid (0–20) and contrast-free blood count too)
    bone         HU > 300

The bands do not tile the HU axis on purpose ((-500, -150) and (100, 300] are partial-volume and contrast
territory, counted by no tissue). Per volume and tissue: the voxel fraction, mean, SD and percentiles. The
real range of each statistic is the (low, high) quantile over the real volumes (default 1st–99th
percentile; (0, 1) = min–max), widened by `margin` × its width and by a floor tolerance, because with tens of
real volumes some ranges are a few HU wide (the bone median of a phantom): `hu_tolerance` HU on both sides
for the HU statistics, and ±`fraction_tolerance` × the bound for the fractions (relative: a 9 % lung
fraction and a 60 % air fraction do not vary by the same absolute amount). A generated value outside is
flagged.
Statistics of a tissue with fewer than `min_voxels` voxels in a volume are NaN (a mean over 3 voxels is
noise) and are neither used for the range nor flagged, except the fraction, which is always defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["HUSanityConfig", "HUSanityReport", "TISSUE_BANDS", "hu_sanity", "real_ranges", "tissue_statistics"]

# (low, high, include_low, include_high); None = unbounded
TISSUE_BANDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "air": (None, -900.0, False, False),
    "lung": (-900.0, -500.0, True, False),
    "fat": (-150.0, -50.0, True, True),
    "soft_tissue": (-50.0, 100.0, False, True),
    "bone": (300.0, None, False, False),
}


@dataclass(frozen=True)
class HUSanityConfig:
    """Which statistics, how the real range is taken, and when a tissue is too small to describe."""

    percentiles: tuple[float, ...] = (5.0, 50.0, 95.0)
    range_quantiles: tuple[float, float] = (0.01, 0.99)  # of each statistic over the real volumes
    margin: float = 0.1  # widen each real range by this fraction of its width on both sides
    hu_tolerance: float = 20.0  # and HU statistics (mean, sd, percentiles) by at least this many HU
    fraction_tolerance: float = 0.25  # and fractions by this fraction of their bounds (low·(1−t), high·(1+t))
    min_voxels: int = 50
    bands: Mapping[str, tuple[float | None, float | None, bool, bool]] = field(
        default_factory=lambda: dict(TISSUE_BANDS))

    def __post_init__(self) -> None:
        low, high = self.range_quantiles
        if (not 0.0 <= low < high <= 1.0 or min(self.margin, self.hu_tolerance, self.fraction_tolerance) < 0
                or self.min_voxels < 1):
            raise ValueError("need 0 <= range_quantiles[0] < range_quantiles[1] <= 1, non-negative margin and "
                             "tolerances, min_voxels >= 1")


def _mask(hu: np.ndarray, band: tuple[float | None, float | None, bool, bool]) -> np.ndarray:
    low, high, include_low, include_high = band
    mask = np.ones(hu.shape, dtype=bool)
    if low is not None:
        mask &= hu >= low if include_low else hu > low
    if high is not None:
        mask &= hu <= high if include_high else hu < high
    return mask


def tissue_statistics(hu: np.ndarray, config: HUSanityConfig = HUSanityConfig()) -> dict[str, float]:
    """`{tissue}/{statistic}` → value for one HU volume (any shape): fraction, mean, sd, p<q>."""
    hu = np.asarray(hu, dtype=np.float64)
    out: dict[str, float] = {}
    for tissue, band in config.bands.items():
        values = hu[_mask(hu, band)]
        out[f"{tissue}/fraction"] = values.size / hu.size if hu.size else float("nan")
        enough = values.size >= config.min_voxels
        out[f"{tissue}/mean"] = float(values.mean()) if enough else float("nan")
        out[f"{tissue}/sd"] = float(values.std()) if enough else float("nan")
        for q in config.percentiles:
            out[f"{tissue}/p{q:g}"] = float(np.percentile(values, q)) if enough else float("nan")
    return out


def _table(volumes: Iterable[np.ndarray], names: Sequence[str] | None, config: HUSanityConfig) -> pd.DataFrame:
    rows = [tissue_statistics(v, config) for v in volumes]
    names = list(names) if names is not None else [str(i) for i in range(len(rows))]
    if len(names) != len(rows):
        raise ValueError(f"{len(names)} names for {len(rows)} volumes")
    return pd.DataFrame(rows, index=pd.Index(names, name="volume"))


def real_ranges(real_stats: pd.DataFrame, config: HUSanityConfig = HUSanityConfig()) -> pd.DataFrame:
    """Per statistic (rows): `low`, `high` (quantiles over the real volumes, NaNs ignored, widened by the
    margin and the tolerances of the module docstring) and `n_real`, the volumes it rests on."""
    low_q, high_q = config.range_quantiles
    low = real_stats.quantile(low_q)
    high = real_stats.quantile(high_q)
    width = high - low
    low, high = low - config.margin * width, high + config.margin * width
    is_fraction = pd.Series([str(name).endswith("/fraction") for name in real_stats.columns], index=low.index)
    low = low.where(is_fraction, low - config.hu_tolerance)
    high = high.where(is_fraction, high + config.hu_tolerance)
    low = low.where(~is_fraction, (low * (1 - config.fraction_tolerance)).clip(lower=0.0))
    high = high.where(~is_fraction, (high * (1 + config.fraction_tolerance)).clip(upper=1.0))
    return pd.DataFrame({"low": low, "high": high, "n_real": real_stats.notna().sum()})


@dataclass
class HUSanityReport:
    """`real` / `generated`: one row of statistics per volume; `ranges`: the real range per statistic;
    `flags`: one row per (generated volume, statistic) outside its range, with the reason."""

    real: pd.DataFrame
    generated: pd.DataFrame
    ranges: pd.DataFrame
    flags: pd.DataFrame  # columns: volume, tissue, statistic, value, low, high, reason

    @property
    def flagged_volumes(self) -> list[str]:
        return sorted(set(self.flags["volume"]))

    def summary(self) -> dict[str, float]:
        n = len(self.generated)
        return {"hu_sanity/generated_volumes": float(n),
                "hu_sanity/flagged_volumes": float(len(self.flagged_volumes)),
                "hu_sanity/flagged_fraction": len(self.flagged_volumes) / n if n else float("nan")}


def hu_sanity(real_hu: Iterable[np.ndarray], generated_hu: Iterable[np.ndarray], *,
              config: HUSanityConfig = HUSanityConfig(), real_names: Sequence[str] | None = None,
              generated_names: Sequence[str] | None = None) -> HUSanityReport:
    """Statistics of both sets (volumes in HU), the real ranges, and the generated values outside them.

    Grids in [-1, 1] convert with `generatect_kedro.metrics.image_quality.to_hu` first. A statistic the
    real set never defines (e.g. every real tissue too small) has no range and flags nothing.
    """
    real = _table(real_hu, real_names, config)
    generated = _table(generated_hu, generated_names, config)
    if len(real) < 2:
        raise ValueError("HU sanity needs at least 2 real volumes to define a range")
    ranges = real_ranges(real, config)
    flags = []
    for volume, row in generated.iterrows():
        for statistic, value in row.items():
            low, high = ranges.at[statistic, "low"], ranges.at[statistic, "high"]
            if not (np.isfinite(value) and np.isfinite(low) and np.isfinite(high)):
                continue
            if value < low or value > high:
                tissue, stat = str(statistic).split("/", 1)
                side = "below" if value < low else "above"
                flags.append({"volume": volume, "tissue": tissue, "statistic": stat, "value": float(value),
                              "low": float(low), "high": float(high),
                              "reason": f"{tissue} {stat} {value:.4g} is {side} the real range "
                                        f"[{low:.4g}, {high:.4g}]"})
    columns = ["volume", "tissue", "statistic", "value", "low", "high", "reason"]
    return HUSanityReport(real=real, generated=generated, ranges=ranges, flags=pd.DataFrame(flags, columns=columns))
