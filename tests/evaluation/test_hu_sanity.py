"""HU sanity: tissue bands and statistics by hand, and the flags on phantom chests (a -300 HU lung is caught)."""

from __future__ import annotations

import numpy as np
import pytest

from generatect_kedro.evaluation.hu_sanity import HUSanityConfig, hu_sanity, tissue_statistics
from generatect_kedro.phantom.abnormalities import render_chest

SHAPE, SPACING = (9, 32, 32), (34.0, 11.0, 11.0)


def test_tissue_statistics_by_hand():
    hu = np.array([-1000.0, -950.0, -900.0, -600.0, -100.0, -50.0, 0.0, 100.0, 200.0, 500.0])
    stats = tissue_statistics(hu, HUSanityConfig(min_voxels=1, percentiles=(50.0,)))
    # bands: air < -900; lung [-900, -500); fat [-150, -50]; soft (-50, 100]; bone > 300; 200 HU is in none
    assert stats["air/fraction"] == pytest.approx(0.2) and stats["air/mean"] == pytest.approx(-975.0)
    assert stats["lung/fraction"] == pytest.approx(0.2) and stats["lung/mean"] == pytest.approx(-750.0)
    assert stats["fat/fraction"] == pytest.approx(0.2) and stats["fat/p50"] == pytest.approx(-75.0)
    assert stats["soft_tissue/fraction"] == pytest.approx(0.2) and stats["soft_tissue/sd"] == pytest.approx(50.0)
    assert stats["bone/fraction"] == pytest.approx(0.1) and stats["bone/mean"] == pytest.approx(500.0)


def test_small_tissues_have_no_statistics_but_a_fraction():
    stats = tissue_statistics(np.full(100, -1000.0), HUSanityConfig(min_voxels=5))
    assert stats["air/fraction"] == 1.0 and stats["bone/fraction"] == 0.0 and np.isnan(stats["bone/mean"])


def _chest(seed: int) -> np.ndarray:
    return render_chest(SHAPE, SPACING, [], np.random.default_rng(seed))


@pytest.fixture(scope="module")
def real_chests():
    return [_chest(seed) for seed in range(30)]


def test_flags_a_chest_with_lungs_at_minus_300_and_not_a_normal_one(real_chests):
    normal = _chest(100)
    dense = _chest(101)
    lung = (dense >= -900) & (dense < -500)
    dense[lung] = -300.0 + np.random.default_rng(0).normal(0, 15, lung.sum())
    report = hu_sanity(real_chests, [normal, dense], generated_names=["normal", "dense-lungs"],
                       config=HUSanityConfig(range_quantiles=(0.0, 1.0)))
    assert report.flagged_volumes == ["dense-lungs"]
    reasons = report.flags[report.flags.volume == "dense-lungs"]
    assert ("lung", "fraction") in set(zip(reasons.tissue, reasons.statistic))
    assert reasons.reason.str.contains("below the real range").any()
    assert report.summary()["hu_sanity/flagged_fraction"] == pytest.approx(0.5)


def test_real_range_is_the_configured_quantile(real_chests):
    config = HUSanityConfig(range_quantiles=(0.0, 1.0), margin=0.0, hu_tolerance=5.0, fraction_tolerance=0.5)
    report = hu_sanity(real_chests, real_chests[:1], config=config)
    assert report.ranges.at["lung/mean", "low"] == pytest.approx(report.real["lung/mean"].min() - 5.0)
    assert report.ranges.at["lung/mean", "high"] == pytest.approx(report.real["lung/mean"].max() + 5.0)
    assert report.ranges.at["lung/fraction", "low"] == pytest.approx(report.real["lung/fraction"].min() * 0.5)
    median = HUSanityConfig(range_quantiles=(0.5, 0.75), margin=0.0, hu_tolerance=0.0)
    ranges = hu_sanity(real_chests, real_chests[:1], config=median).ranges
    assert ranges.at["fat/mean", "low"] == pytest.approx(report.real["fat/mean"].median())
    assert report.flags.empty  # a real volume is inside the min–max range of a set that contains it
    with pytest.raises(ValueError, match="at least 2"):
        hu_sanity(real_chests[:1], real_chests[:1])
