"""What every benchmark script shares: the result record, peak memory, and the ``--json``/``--device`` options.

Each ``bench_*.py`` has ``run(quick=False, device="cpu", ...) -> list[dict]`` that prints the script's human
lines and returns one record per measured case (``record`` below); ``python benchmarks/bench_X.py --json OUT``
also writes those records to OUT, which is how ``run_all.py`` collects them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path
from typing import Any

RECORD_KEYS = ("benchmark", "stage", "shape", "seconds", "throughput", "throughput_unit", "peak_rss_mib",
               "peak_gpu_mib", "status", "error", "notes")


def record(benchmark: str, stage: str, shape: str | None = None, seconds: float | None = None,
           throughput: float | None = None, throughput_unit: str | None = None, peak_rss_mib: float | None = None,
           peak_gpu_mib: float | None = None, error: str | None = None, notes: str = "", **extra: Any) -> dict:
    """One measured case. ``seconds`` is the time of one measured unit (as the script's table defines it);
    ``throughput`` is work per second in ``throughput_unit``; memory figures are process peaks in MiB."""
    out = {"benchmark": benchmark, "stage": stage, "shape": shape, "seconds": seconds, "throughput": throughput,
           "throughput_unit": throughput_unit, "peak_rss_mib": peak_rss_mib, "peak_gpu_mib": peak_gpu_mib,
           "status": "failed" if error else "ok", "error": error, "notes": notes}
    out.update(extra)
    return out


def per_second(amount: float, seconds: float | None) -> float | None:
    return amount / seconds if seconds else None


def peak_rss_mib() -> float:
    """This process's peak resident set, MiB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark into a child across fork and exec, so a
    child started by a process that once held 800 MB reports at least 800 MB whatever it used itself.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_gpu_mib(device: str) -> float | None:
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def add_common_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    parser.add_argument("--json", type=Path, default=None, help="also write the result records to this JSON file")
    if device:
        parser.add_argument("--device", default=os.environ.get("DEVICE", "cpu"),
                            help="cpu or cuda (default $DEVICE, else cpu)")


def write_json(path: Path | None, records: list[dict]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False, default=str) + "\n")
