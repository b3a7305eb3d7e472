"""`benchmarks/bench_solver_quality.py` without a trained demo: the skipped record, how run_all counts it, and
the "keeps quality" rule on constructed numbers. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_solver_quality as bench  # noqa: E402
import run_all  # noqa: E402

REF = {"psnr_hu": 30.0, "hf_power_share": 0.50}


def _row(psnr: float, hf: float) -> dict:
    return {"psnr_hu": psnr, "hf_power_share": hf}


def test_without_run_dir_it_records_a_skip(tmp_path: Path) -> None:
    out = tmp_path / "records.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_solver_quality.py", "--json", str(out), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: needs --run-dir" in proc.stdout
    records = json.loads(out.read_text())
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "skipped" and rec["error"] is None and rec["benchmark"] == "solver_quality"
    assert set(run_all.RECORD_KEYS) <= set(rec)


def test_run_all_counts_a_skip_as_not_failed(tmp_path: Path) -> None:
    assert "solver_quality" in run_all.discover()
    records, status = run_all.run_one("solver_quality", ROOT / "benchmarks" / "bench_solver_quality.py", quick=True,
                                      device="cpu", timeout=120)
    assert status["status"] == "skipped" and status["error"] is None
    assert [r["status"] for r in records] == ["skipped"]
    machine = {"cpu_model": "test cpu", "cpu_count": 2, "cpu_usable": 2, "ram_gib": 4.0, "device": "cpu",
               "cuda_device": None, "date": "today", "python": "3", "torch": "2"}
    run = {"command": "run_all.py --quick", "quick": True, "device": "cpu", "threads": 1, "wall_seconds": 1.0,
           "json": "x.json"}
    markdown = run_all.to_markdown({"machine": machine, "run": run, "benchmarks": {"solver_quality": status},
                                    "results": records})
    assert "| skipped |" in markdown and "needs --run-dir" in markdown


@pytest.mark.parametrize(("row", "ok"), [
    (_row(30.0, 0.50), True),
    (_row(29.75, 0.54), True),    # 0.25 dB lower, +8 % HF
    (_row(31.5, 0.46), True),     # higher PSNR is never a loss; −8 % HF
    (_row(29.6, 0.50), False),    # 0.4 dB lower
    (_row(30.5, 0.44), False),    # −12 % HF: smoother than the reference
    (_row(30.0, 0.56), False),    # +12 % HF: more invented detail
])
def test_passes(row: dict, ok: bool) -> None:
    assert bench.passes(row, REF, psnr_tol=0.3, hf_tol=0.10) is ok


def test_recommend_needs_every_larger_count_to_pass() -> None:
    rows = {5: _row(28.0, 0.30), 8: _row(29.9, 0.52), 10: _row(29.0, 0.50), 12: _row(29.95, 0.49),
            16: _row(30.0, 0.50), 25: _row(30.1, 0.51)}
    assert bench.recommend(rows, REF) == 12  # 8 passes, but 10 does not
    rows[10] = _row(29.8, 0.48)
    assert bench.recommend(rows, REF) == 8
    assert bench.recommend({5: _row(20.0, 0.1), 25: _row(20.0, 0.1)}, REF) is None
    assert bench.recommend(rows, REF, psnr_tol=0.01, hf_tol=0.03) == 16  # 25: +2 % HF


def test_wasserstein1() -> None:
    import torch

    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert bench.wasserstein1(a, a.flip(0)) == 0.0  # order does not matter: distributions are compared
    assert bench.wasserstein1(a, a + 5.0) == pytest.approx(5.0)
    assert bench.wasserstein1(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bench.wasserstein1(a, a[:3])


def test_parse_settings_names_known_samplers() -> None:
    assert bench.parse_settings("ancestral:25,50; dpm++2m-sde:8") == [
        ("ancestral", 25), ("ancestral", 50), ("dpm++2m-sde", 8)]
    assert bench.parse_settings("") == []
    for bad in ("euler:10", "ancestral", "dpm++2m-sde:x"):
        with pytest.raises(ValueError):
            bench.parse_settings(bad)


def test_fastest_keeping_quality_compares_samplers_by_time() -> None:
    def row(sampler: str, steps: int, seconds: float, psnr: float, hf: float) -> dict:
        return {"sampler": sampler, "steps": steps, "seconds": seconds, **_row(psnr, hf)}

    results = [row("ancestral", 25, 3.0, 30.3, 0.38), row("ancestral", 100, 12.0, 30.1, 0.47),
               row("dpm++2m-sde", 8, 1.0, 30.1, 0.44), row("dpm++2m-sde", 12, 1.4, 29.9, 0.52),
               row("dpm++2m-sde", 25, 3.0, 29.9, 0.51), row("dpm++2m", 12, 1.4, 29.5, 0.70)]
    best = bench.fastest_keeping_quality(results, REF)
    assert (best["sampler"], best["steps"]) == ("dpm++2m-sde", 12)  # sde 8 is −12 % HF; ancestral 100 is slower
    results[4] = row("dpm++2m-sde", 25, 3.0, 29.9, 0.60)  # a larger count fails: sde is out, ancestral 100 wins
    best = bench.fastest_keeping_quality(results, REF)
    assert (best["sampler"], best["steps"]) == ("ancestral", 100)
    assert bench.fastest_keeping_quality(results[-1:], REF) is None
