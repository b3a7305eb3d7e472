"""What every benchmark script shares: the result record, peak memory, the ``--json``/``--device``/``--precision``
options, and model FLOP utilisation (MFU).

Each ``bench_*.py`` has ``run(quick=False, device="cpu", ...) -> list[dict]`` that prints the script's human
lines and returns one record per measured case (``record`` below); ``python benchmarks/bench_X.py --json OUT``
also writes those records to OUT, which is how ``run_all.py`` collects them.

MFU = achieved FLOP/s ÷ the GPU's dense bf16 peak. The FLOPs are model FLOPs counted by
`generatect_kedro.capacity.flops` (matrix products and convolutions, attention without the fused kernels'
recomputation); the peak comes from `BF16_PEAK_TFLOPS` by the name CUDA reports. Issue #8 asks for ≥ 40 % in
the transformers' training steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
from collections.abc import Iterator
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


def memory_baseline(device: str) -> float:
    """MiB in use before a case runs: on CUDA the allocated memory (after resetting the peak counter), else this
    process's current resident set (``/proc/self/statm``); `memory_peaks` reports the peak above it."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_peaks(device: str, base: float) -> dict[str, float | None]:
    """``peak_rss_mb`` (VmHWM), ``peak_gpu_mb`` (None off CUDA) and ``peak_delta_mb``: the device's peak minus
    ``base`` from `memory_baseline`."""
    cuda = str(device).startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
    peak_rss, peak_gpu = peak_rss_mib(), peak_gpu_mib(device)
    return {"peak_rss_mb": peak_rss, "peak_gpu_mb": peak_gpu, "peak_delta_mb": (peak_gpu if cuda else peak_rss) - base}


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


# ---- precision and MFU ----------------------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16")

# Dense bf16 tensor-core peaks in TFLOPS (NVIDIA datasheets; half the "with sparsity" figures), keyed by a
# substring of ``torch.cuda.get_device_name()``. The first match wins: specific names come before their prefixes
# ("H100 PCIe" before "H100", "A100" before "A10", "L40S" before "L40" before "L4").
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.5),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),
    ("H200", 989.5),
    ("A100", 312.0),
    ("A10G", 125.0),  # AWS's A10 variant: not on a datasheet, taken as an A10
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),  # GeForce: bf16 with fp32 accumulation (330 with fp16 accumulation)
    ("A6000", 155.0),  # RTX A6000, approximate
)


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name, or None for an unknown GPU or no GPU."""
    if not device_name:
        return None
    name = device_name.lower()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key.lower() in name), None)


def device_bf16_peak_tflops(device: str) -> float | None:
    """The peak of the GPU ``device`` names (None on a CPU: MFU is a GPU figure)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return bf16_peak_tflops(torch.cuda.get_device_name(torch.device(device)))


def mfu_fields(flops: float | None, seconds: float | None, peak_tflops: float | None,
               per: str = "step") -> dict[str, float | None]:
    """``tflop_per_<per>``, ``achieved_tflops`` (flops / seconds) and ``mfu`` (achieved / peak; None without a
    peak) for a record."""
    achieved = flops / seconds / 1e12 if flops and seconds else None
    return {f"tflop_per_{per}": flops / 1e12 if flops is not None else None, "achieved_tflops": achieved,
            "mfu": achieved / peak_tflops if achieved is not None and peak_tflops else None}


def describe_mfu(fields: dict[str, Any]) -> str:
    """``", 4.1 TFLOP per step, 123 TFLOPS achieved, MFU 39.4%"`` for a record's notes (empty without FLOPs)."""
    if fields.get("achieved_tflops") is None:
        return ""
    work = next((f", {value:.3g} TFLOP per {key.removeprefix('tflop_per_')}" for key, value in fields.items()
                 if key.startswith("tflop_per_") and value is not None), "")
    mfu = f", MFU {fields['mfu']:.1%}" if fields.get("mfu") is not None else ""
    return f"{work}, {fields['achieved_tflops']:.3g} TFLOPS achieved{mfu}"


MFU_HEADER = f"{'TFLOP':>8s} {'TFLOPS':>8s} {'MFU':>6s}"  # the columns `mfu_cells` fills


def mfu_cells(fields: dict[str, float | None], per: str = "step") -> str:
    """TFLOP per step, achieved TFLOPS and MFU as table cells under `MFU_HEADER` (blank where not measured)."""
    def cell(value: float | None, fmt: str, width: int) -> str:
        return f"{value:{width}{fmt}}" if value is not None else " " * width

    return (f"{cell(fields.get(f'tflop_per_{per}'), '.3g', 8)} {cell(fields.get('achieved_tflops'), '.3g', 8)} "
            f"{cell(fields.get('mfu'), '.1%', 6)}")


def describe_peak(device: str, peak_tflops: float | None) -> str:
    """The header's word on MFU: the peak used, or why there is none."""
    if not str(device).startswith("cuda"):
        return "MFU on GPUs only"
    return f"bf16 peak {peak_tflops:g} TFLOPS" if peak_tflops else "GPU not in BF16_PEAK_TFLOPS: no MFU"


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast of the model work: auto = bf16 on CUDA (the MFU goal is about the bf16 "
                             "peak), fp32 on CPU")


def resolve_precision(precision: str, device: str) -> str:
    """'auto' → 'bf16' on CUDA, else 'fp32' (the trainer's rule)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return precision


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """bf16 autocast on ``device`` for 'bf16' (weights stay fp32, as in training); nothing for 'fp32'."""
    import torch

    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
