"""FLOPs of every training stage and of one generated volume, and the time they take at the GPU's bf16 peak.

Why: issue #8 sets compute goals (transformer training steps at ≥ 40 % of the bf16 peak; one 201×512×512
volume through the cascade in ≤ 15 s on one H100). The counts here (model FLOPs on meta, `capacity.flops`) are
what a benchmark's time turns into an MFU, and ``flops / peak`` is the floor no implementation beats.

* Training: forward + backward of every trained part's loss on one micro-batch (the closures of
  `meta_models`; for the CT-ViT a step that also trains the discriminator), times the gradient accumulation:
  the FLOPs one GPU runs per optimizer step. Gradient checkpointing's recomputation is not counted.
* Generation, per volume: the transformer samples ``batch`` items in ``steps`` steps with one context per batch
  (counted with 1 and 2 steps: FLOPs are linear in the steps, a critic scores every step but the last); the
  CT-ViT decodes once; each super-resolution stage makes ``steps`` calls per slice batch, FLOPs in proportion
  to the slices (a volume's last call holds the remainder); a call is measured as it runs, so classifier-free
  guidance (cond_scale != 1: one U-Net pass on twice the slices) counts double. The text encoder is not counted
  (one forward per prompt, and often a folder on another machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from generatect_kedro.capacity.flops import count_flops, count_training_flops

__all__ = ["MFU_GOAL", "TrainingCompute", "VolumeCompute", "WorkloadCompute", "duration", "generation_compute",
           "seconds_at", "tflop", "training_compute"]

MFU_GOAL = 0.4  # issue #8: training steps at >= 40 % of the bf16 peak

# Counts of equal signatures are equal (as for the memory measurements in `report`).
_TRAINING_FLOPS: dict[str, int] = {}
_CALL_FLOPS: dict[tuple, int] = {}


def seconds_at(flops: float, peak_tflops: float, fraction: float = 1.0) -> float:
    """Time of ``flops`` at ``fraction`` of a peak of ``peak_tflops`` (10¹² FLOP/s)."""
    return flops / (peak_tflops * 1e12 * fraction)


def tflop(flops: float) -> str:
    value = flops / 1e12
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _time_note(flops: float, peak_tflops: float | None, applies: bool) -> str:
    """The floor at the peak and the time at the goal's fraction of it; empty without a peak or off bf16 GPUs."""
    if peak_tflops is None or not applies:
        return ""
    return (f"at the GPU's bf16 peak ({peak_tflops:g} TFLOPS) >= {duration(seconds_at(flops, peak_tflops))}; "
            f"at {MFU_GOAL:.0%} of peak {duration(seconds_at(flops, peak_tflops, MFU_GOAL))}")


# ---- training -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingCompute:
    """FLOPs of one micro-batch per trained part, and the accumulation that makes an optimizer step."""

    part_flops: tuple[tuple[str, int], ...]  # (part, forward + backward on one micro-batch)
    grad_accumulation: int

    @property
    def micro_batch_flops(self) -> int:
        return sum(flops for _, flops in self.part_flops)

    @property
    def step_flops(self) -> int:
        """FLOPs one GPU runs per optimizer step."""
        return self.micro_batch_flops * self.grad_accumulation

    def describe(self, peak_tflops: float | None, bf16_on_gpu: bool) -> list[str]:
        """The FLOPs line and, with a peak for a bf16 GPU stage, the step-time line."""
        parts = " + ".join(f"{name} {tflop(flops)}" for name, flops in self.part_flops)
        per_micro = f" ({parts} per micro-batch)" if len(self.part_flops) > 1 or self.grad_accumulation > 1 else ""
        time = _time_note(self.step_flops, peak_tflops, bf16_on_gpu)
        return ([f"compute: {tflop(self.step_flops)} TFLOP per optimizer step per GPU{per_micro}"]
                + ([f"step time {time}"] if time else []))


def training_compute(stage: Any, dtype: torch.dtype | None) -> TrainingCompute:
    """Count every trained part's loss, forward + backward, on meta (``dtype``: the stage's autocast)."""
    modules = [p.module for p in stage.parts + stage.frozen]
    counted = []
    for part in stage.parts:
        if not part.signature or part.signature not in _TRAINING_FLOPS:
            part.module.train()
            _TRAINING_FLOPS[part.signature] = count_training_flops(part.loss, dtype=dtype, modules=modules)
        counted.append((part.name, _TRAINING_FLOPS[part.signature]))
    return TrainingCompute(tuple(counted), stage.trainer.grad_accumulation)


# ---- generation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkloadCompute:
    """One generation workload: FLOPs of a call, the calls one volume takes, FLOPs per volume."""

    name: str
    call_flops: int
    calls_per_volume: float
    volume_flops: float
    detail: str = ""  # how the calls add up, e.g. "25 steps x 26 slice batches"

    def describe(self) -> str:
        calls = f"{self.calls_per_volume:g} call{'s' if self.calls_per_volume != 1 else ''} per volume"
        detail = f" ({self.detail})" if self.detail else ""
        return (f"compute: {tflop(self.call_flops)} TFLOP per call x {calls}{detail} = {tflop(self.volume_flops)} "
                "TFLOP per volume")


@dataclass(frozen=True)
class VolumeCompute:
    """FLOPs of one generated volume, summed over the workloads."""

    workloads: tuple[WorkloadCompute, ...]

    @property
    def flops(self) -> float:
        return sum(w.volume_flops for w in self.workloads)

    def describe(self, peak_tflops: float | None, bf16_on_gpu: bool) -> str:
        time = _time_note(self.flops, peak_tflops, bf16_on_gpu)
        return f"compute per volume: {tflop(self.flops)} TFLOP" + (f"; {time}" if time else "")


def _call_flops(workload: Any, dtype: torch.dtype | None, *args: Any) -> int:
    key = (workload.signature, *args)
    if not workload.signature or key not in _CALL_FLOPS:
        _CALL_FLOPS[key] = count_flops(lambda: workload.run(*args), dtype=dtype)
    return _CALL_FLOPS[key]


def _workload_compute(workload: Any, dtype: torch.dtype | None) -> WorkloadCompute:
    rep = workload.repetition
    if rep.kind == "sampling":
        one, two = _call_flops(workload, dtype, 1), _call_flops(workload, dtype, 2)
        step = two - one  # a guided step of the batch (+ the critic's scoring); ``one`` adds the context
        return WorkloadCompute(workload.name, step, rep.steps / rep.per_call,
                               (one + (rep.steps - 1) * step) / rep.per_call,
                               f"{rep.steps} steps / {rep.per_call} items per call")
    flops = _call_flops(workload, dtype)
    if rep.kind == "slices":
        batches = math.ceil(rep.slices / rep.per_call)
        return WorkloadCompute(workload.name, flops, rep.steps * batches, flops * rep.steps * rep.slices / rep.per_call,
                               f"{rep.steps} steps x {batches} call{'s' if batches > 1 else ''} for {rep.slices} "
                               "slices")
    return WorkloadCompute(workload.name, flops, 1, flops)


def generation_compute(plan: Any) -> VolumeCompute:
    """FLOPs per call and per volume of every workload of a `GenerationPlan` (see the module docstring)."""
    return VolumeCompute(tuple(_workload_compute(w, plan.autocast) for w in plan.workloads))
