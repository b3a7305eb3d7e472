"""`benchmarks/run_all.py`: the JSON schema, the Markdown table, and failures recorded instead of fatal.

Runs the real scripts in `--quick` mode into tmp_path (ingestion always; CT-ViT under the `slow` marker).
No timing assertions: only that figures exist, are positive and reach the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402

MACHINE_KEYS = {"cpu_model", "cpu_count", "cpu_usable", "ram_gib", "torch", "cuda_device", "git_commit", "date",
                "python", "device"}


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick", "--device", "cpu", "--out", str(out),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == 1, (proc.stdout, proc.stderr)
    assert jsons[0].name.startswith("cpu-") and jsons[0].name.endswith("-quick.json")
    markdown = jsons[0].with_suffix(".md")
    assert markdown.is_file() and jsons[0].with_suffix(".log").is_file()
    return proc, json.loads(jsons[0].read_text()), markdown.read_text()


def _row(markdown: str, rec: dict) -> str:
    prefix = f"| {rec['benchmark']} | {rec['stage']} |"
    rows = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, f"no single table row for {prefix!r}"
    return rows[0]


def _check_ok_run(result: dict, markdown: str, benchmark: str) -> list[dict]:
    assert result["schema_version"] == run_all.SCHEMA_VERSION
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["run"]["quick"] is True and result["run"]["device"] == "cpu"
    assert result["benchmarks"][benchmark]["status"] == "ok", result["benchmarks"][benchmark]
    records = [r for r in result["results"] if r["benchmark"] == benchmark]
    assert records
    assert result["machine"]["cpu_model"] in markdown.splitlines()[0]
    for rec in records:
        assert set(run_all.RECORD_KEYS) <= set(rec)
        assert rec["status"] == "ok" and rec["error"] is None
        assert isinstance(rec["seconds"], float) and rec["seconds"] > 0
        assert rec["throughput"] is None or (rec["throughput"] > 0 and rec["throughput_unit"].endswith("/s"))
        assert rec["peak_gpu_mib"] is None  # CPU run
        row = _row(markdown, rec)
        assert f"| {run_all._num(rec['seconds'])} |" in row
        if rec["throughput"] is not None:
            assert f"{run_all._num(rec['throughput'])} {rec['throughput_unit']}" in row
        if rec["peak_rss_mib"]:
            assert f"| {run_all._num(rec['peak_rss_mib'])} |" in row
    return records


def test_ingestion_quick_json_and_markdown(tmp_path):
    proc, result, markdown = _run(tmp_path, "--only", "ingestion")
    assert proc.returncode == 0, proc.stderr
    records = _check_ok_run(result, markdown, "ingestion")
    stages = " ".join(r["stage"] for r in records)
    for stage in ("bare pydicom read + HU (floor)", "header scan", "series planning", "HU conversion", "NIfTI write",
                  "ingestion to HU volumes", "ingestion end to end"):
        assert stage in stages
    assert all(r["throughput_unit"] == "slices/s" and r["peak_rss_mib"] > 0 for r in records)
    floor = next(r for r in records if "(floor)" in r["stage"])
    ratios = [r for r in records if r.get("ratio_to_floor") is not None]
    assert len(ratios) == 2
    for rec in ratios:
        assert rec["ratio_to_floor"] == pytest.approx(rec["throughput"] / floor["throughput"])
        assert f"{rec['ratio_to_floor']:.2f}× a bare `pydicom.dcmread`" in markdown
    assert "Ingestion against the pydicom floor" in markdown
    assert "bare pydicom dcmread" in proc.stdout  # the script's own human lines still print


@pytest.mark.slow
def test_ctvit_quick_json_and_markdown(tmp_path):
    proc, result, markdown = _run(tmp_path, "--only", "ctvit")
    assert proc.returncode == 0, proc.stderr
    records = _check_ok_run(result, markdown, "ctvit")
    model_cases = [r for r in records if r["throughput_unit"] == "slices/s"]
    assert len(model_cases) == 2 and all(r["peak_rss_mib"] > 0 and r["params_m"] > 0 for r in model_cases)
    assert not any(r["stage"].startswith("paper") for r in records)  # --quick skips the paper scale
    assert "CT-ViT case" in proc.stdout


def test_failures_are_recorded_and_the_rest_still_runs(tmp_path):
    bench_dir = tmp_path / "benches"
    bench_dir.mkdir()
    (bench_dir / "bench_boom.py").write_text("raise RuntimeError('boom: the benchmark broke')\n")
    (bench_dir / "bench_silent.py").write_text("print('forgot to write --json')\n")
    (bench_dir / "bench_fine.py").write_text(
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json'); p.add_argument('--device');"
        " p.add_argument('--quick', action='store_true'); a = p.parse_args()\n"
        "open(a.json, 'w').write(json.dumps([{'benchmark': 'fine', 'stage': 'noop', 'shape': '1', 'seconds': 0.5,"
        " 'throughput': 2.0, 'throughput_unit': 'noops/s', 'peak_rss_mib': 10.0, 'peak_gpu_mib': None,"
        " 'status': 'ok', 'error': None, 'notes': ''}]))\n")
    proc, result, markdown = _run(tmp_path, "--bench-dir", str(bench_dir), "--only", "boom", "fine", "silent",
                                  "nosuch")
    assert proc.returncode == 1
    status = result["benchmarks"]
    assert list(status) == ["boom", "fine", "silent", "nosuch"]
    assert status["fine"]["status"] == "ok"
    assert status["boom"]["status"] == "failed" and "boom: the benchmark broke" in status["boom"]["error"]
    assert status["silent"]["status"] == "failed" and "no JSON" in status["silent"]["error"]
    assert status["nosuch"]["status"] == "failed" and "no benchmark named 'nosuch'" in status["nosuch"]["error"]
    by_name = {r["benchmark"]: r for r in result["results"]}
    assert by_name["fine"]["status"] == "ok" and by_name["fine"]["seconds"] == 0.5
    for name in ("boom", "silent", "nosuch"):
        assert by_name[name]["status"] == "failed" and by_name[name]["error"]
        row = _row(markdown, by_name[name])
        assert "| failed |" in row
    assert "| 0.5 | 2.00 noops/s |" in _row(markdown, by_name["fine"])
