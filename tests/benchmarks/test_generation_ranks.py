"""`benchmarks/bench_generation_ranks.py`: two torchrun ranks split a batch and the scaling figures are derived
from the ranks' own timings. No timing assertions (a shared CI machine says nothing about speed)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_generation_ranks as bench  # noqa: E402


def test_two_ranks_share_the_batch_and_report_speedup() -> None:
    import mlflow

    import generation_fixtures as fx  # on sys.path through the bench module

    before = (dict(fx.CTVIT), dict(fx.MASKGIT), dict(fx.UNET), mlflow.get_tracking_uri())
    records = bench.run(device="cpu", ranks=[1, 2], volumes=3)  # raises unless every volume was written
    # the bench's demo shapes and throwaway registry do not leak into the tests that share these modules
    assert (dict(fx.CTVIT), dict(fx.MASKGIT), dict(fx.UNET), mlflow.get_tracking_uri()) == before
    assert [r["ranks"] for r in records] == [1, 2]
    assert [r["volumes_per_rank"] for r in records] == [[3], [2, 1]]  # items rank::world
    one, two = records
    assert one["speedup"] == 1.0 and one["efficiency"] == 1.0
    assert two["seconds"] > 0 and two["speedup"] == one["seconds"] / two["seconds"]
    assert two["efficiency"] == two["speedup"] / 2
    assert two["throughput"] == 3 / two["seconds"] and two["throughput_unit"] == "volumes/s"


def test_default_rank_counts_follow_the_cores() -> None:
    ranks = bench._default_ranks("cpu")
    assert ranks[0] == 1 and all(b == 2 * a for a, b in zip(ranks, ranks[1:]))

