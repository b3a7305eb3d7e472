"""Per-GPU memory of a training stage and of generation: the bookkeeping around the measured activations.

Training, per GPU (P = trainable parameters of a part, N = data-parallel world size):

========================  =================================  =============================================
term                      single / ddp (fp32 weights,        deepspeed (bf16: bf16 weights and gradients,
                          bf16 autocast)                      fp32 master copy in the optimizer)
========================  =================================  =============================================
weights                   4·P                                2·P (4·P without bf16); ÷N under ZeRO-3
gradients                 4·P (+4·P DDP bucket copies)       2·P (4·P); ÷N under ZeRO-2/3
optimizer (Adam/AdamW)    8·P (two fp32 moments)             (8 + 4 master + 4 fp32 gradient partition)·P
                                                              under bf16, 8·P without; ÷N under ZeRO ≥ 1
optimizer-step transient  4·P (foreach temporaries)          4·P ÷N (one fp32 partition)
========================  =================================  =============================================

plus frozen networks (fp32 weights), buffers (e.g. the VQ codebook), fp32 copies a task keeps per parameter
(the super-resolution EMA shadow and its EMA U-Net), DeepSpeed's contiguous gradient buckets
(``reduce_bucket_size`` elements each, two with ``overlap_comm``), and the activations of one micro-batch measured
on meta (`capacity.measure`). Peak = static + max(activations + backward workspace, optimizer-step transient):
the optimizer steps after the backward pass has freed the activations. Parts of one stage (CT-ViT and its
discriminator; MaskGIT and its critic) are resident together and run their losses one after the other.

Generation: every model's weights as stored (fp32; generation casts per call under autocast) plus the text
encoder's, then the largest working set of one step (`capacity.measure.measure_inference`) with the volume
buffers beside it. Every estimate adds a fixed CUDA reserve (context, cuBLAS/cuDNN workspaces) from the
``hardware`` block, which also gives the GPU's dense bf16 peak for the compute lines (`capacity.compute`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GIB", "Hardware", "MemoryEstimate", "ZeroSettings", "training_static_bytes"]

GIB = 2**30


@dataclass(frozen=True)
class Hardware:
    """The GPU a configuration is written for (conf parameters_hardware.yml ``hardware``)."""

    gpu_name: str = "unspecified"
    gpu_memory_gb: float = 80.0  # GiB per GPU
    gpus: int = 1  # GPUs per node = the data-parallel world size a launcher starts
    headroom: float = 0.9  # fraction of the memory an estimate may use (allocator fragmentation, spikes)
    reserved_gb: float = 1.0  # CUDA context and library workspaces, added to every estimate
    bf16_tflops: float | None = None  # dense bf16 tensor peak (no sparsity), 10^12 FLOP/s; None: no time figures

    def __post_init__(self) -> None:
        if self.gpu_memory_gb <= 0 or self.gpus < 1 or not 0 < self.headroom <= 1 or self.reserved_gb < 0:
            raise ValueError(f"hardware: gpu_memory_gb > 0, gpus >= 1, 0 < headroom <= 1 and reserved_gb >= 0 "
                             f"are required, got {self}")
        if self.bf16_tflops is not None and self.bf16_tflops <= 0:
            raise ValueError(f"hardware: bf16_tflops must be > 0 (or absent), got {self.bf16_tflops}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, gpu_memory_gb: float | None = None,
                    bf16_tflops: float | None = None) -> Hardware:
        values = dict(params or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"hardware: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if gpu_memory_gb is not None:
            values["gpu_name"] = (f"{values.get('gpu_name', cls.gpu_name)}, checked as a {gpu_memory_gb:g} GiB GPU "
                                  "(--gpu-memory-gb)")
            values["gpu_memory_gb"] = gpu_memory_gb
        if bf16_tflops is not None:
            values["bf16_tflops"] = bf16_tflops
        peak = values.get("bf16_tflops")
        return cls(gpu_name=str(values.get("gpu_name", cls.gpu_name)),
                   gpu_memory_gb=float(values.get("gpu_memory_gb", cls.gpu_memory_gb)),
                   gpus=int(values.get("gpus", cls.gpus)), headroom=float(values.get("headroom", cls.headroom)),
                   reserved_gb=float(values.get("reserved_gb", cls.reserved_gb)),
                   bf16_tflops=float(peak) if peak is not None else None)

    @property
    def limit_bytes(self) -> int:
        return int(self.gpu_memory_gb * self.headroom * GIB)

    @property
    def reserved_bytes(self) -> int:
        return int(self.reserved_gb * GIB)

    def describe(self) -> str:
        peak = f", dense bf16 peak {self.bf16_tflops:g} TFLOPS" if self.bf16_tflops is not None else ""
        return (f"{self.gpu_name}: {self.gpu_memory_gb:g} GiB x {self.gpus} GPU(s){peak}, estimates may use "
                f"{self.headroom:.0%} = {self.limit_bytes / GIB:.1f} GiB per GPU")


@dataclass(frozen=True)
class ZeroSettings:
    """What of a DeepSpeed config changes memory: ZeRO stage, bf16 weights and the gradient buckets."""

    stage: int = 0
    bf16: bool = False
    reduce_bucket_elements: int = 500_000_000  # DeepSpeed's defaults
    overlap_comm: bool = False
    contiguous_gradients: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ZeroSettings:
        zero = dict(config.get("zero_optimization") or {})
        stage = int(zero.get("stage", 0))
        return cls(stage=stage, bf16=bool((config.get("bf16") or {}).get("enabled", False)),
                   reduce_bucket_elements=int(float(zero.get("reduce_bucket_size", 500_000_000))),
                   overlap_comm=bool(zero.get("overlap_comm", stage == 3)),
                   contiguous_gradients=bool(zero.get("contiguous_gradients", True)))

    def describe(self) -> str:
        return f"ZeRO-{self.stage}{', bf16 weights' if self.bf16 else ''}"


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU bytes of one stage, by term; ``total`` is the peak the stage needs."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    extra: int = 0  # frozen networks, buffers, EMA copies, DeepSpeed buckets
    activations: int = 0  # training: saved for backward + backward workspace; generation: largest working set
    optimizer_step: int = 0  # transient after the backward pass (competes with activations, not added)
    reserved: int = 0

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.extra + self.reserved

    @property
    def total(self) -> int:
        return self.static + max(self.activations, self.optimizer_step)


def training_static_bytes(parameters: int, *, backend: str, zero: ZeroSettings | None,
                          world_size: int) -> MemoryEstimate:
    """Weights, gradients, optimizer state and step transient of ``parameters`` trainable parameters (see the
    module table). bf16 autocast does not change them: outside DeepSpeed's bf16 mode the weights stay fp32."""
    p, n = parameters, max(1, world_size)
    if backend != "deepspeed" or zero is None:
        buckets = 4 * p if backend == "ddp" else 0
        return MemoryEstimate(weights=4 * p, gradients=4 * p + buckets, optimizer=8 * p, optimizer_step=4 * p)
    low = 2 if zero.bf16 else 4
    weights = low * p // (n if zero.stage >= 3 else 1)
    gradients = low * p // (n if zero.stage >= 2 else 1)
    optimizer = (8 + (8 if zero.bf16 else 0)) * p // (n if zero.stage >= 1 else 1)
    buckets = 0
    if zero.stage >= 1 and zero.contiguous_gradients:
        # DeepSpeed allocates whole buckets (not capped by the model size): fp32 under ZeRO-1, the low precision
        # under ZeRO-2 and 3; a second one with overlap_comm
        bucket_bytes = 4 if zero.stage == 1 else low
        buckets = (2 if zero.overlap_comm else 1) * zero.reduce_bucket_elements * bucket_bytes
    return MemoryEstimate(weights=weights, gradients=gradients, optimizer=optimizer, extra=buckets,
                          optimizer_step=4 * p // (n if zero.stage >= 1 else 1))
