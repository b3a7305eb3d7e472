"""`benchmarks/benchlib.py`'s MFU helpers: the bf16 peak by CUDA device name, MFU arithmetic and precision.

No timings: only the pure helpers the benchmarks use to turn a step's FLOPs and seconds into an MFU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import benchlib  # noqa: E402


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.5),  # SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.5),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA A10G", 125.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.0),
    ("NVIDIA RTX A6000", 155.0),
])
def test_bf16_peak_by_device_name(name, peak):
    """Specific names win over their prefixes: an A100 is not an A10, an L40S not an L4, an H100 PCIe not an SXM."""
    assert benchlib.bf16_peak_tflops(name) == peak


def test_unknown_device_and_cpu_have_no_peak():
    assert benchlib.bf16_peak_tflops("NVIDIA Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores
    assert benchlib.bf16_peak_tflops(None) is None
    assert benchlib.device_bf16_peak_tflops("cpu") is None


def test_mfu_is_achieved_over_peak():
    fields = benchlib.mfu_fields(flops=4e12, seconds=0.02, peak_tflops=500.0)
    assert fields["tflop_per_step"] == 4.0
    assert fields["achieved_tflops"] == pytest.approx(200.0)
    assert fields["mfu"] == pytest.approx(0.4)
    on_cpu = benchlib.mfu_fields(flops=4e9, seconds=0.5, peak_tflops=None, per="run")
    assert on_cpu == {"tflop_per_run": 0.004, "achieved_tflops": pytest.approx(0.008), "mfu": None}
    assert benchlib.describe_mfu(fields) == ", 4 TFLOP per step, 200 TFLOPS achieved, MFU 40.0%"
    assert benchlib.describe_mfu({}) == ""


def test_precision_auto_is_bf16_on_cuda_only():
    assert benchlib.resolve_precision("auto", "cuda") == "bf16"
    assert benchlib.resolve_precision("auto", "cuda:1") == "bf16"
    assert benchlib.resolve_precision("auto", "cpu") == "fp32"
    assert benchlib.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        benchlib.resolve_precision("fp16", "cuda")
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with benchlib.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with benchlib.autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
