"""`check_config`: load a Kedro environment, size every stage on meta, validate DeepSpeed, compare with the GPU.

Why one report object: the CLI prints it, tests read its numbers, and a failing stage carries a message that
names the stage, the estimate, the limit and the knob to turn. Compute (FLOPs per training step and per
generated volume, `capacity.compute`) is reported beside memory; it never fails a check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from generatect_kedro.capacity.compute import (TrainingCompute, VolumeCompute, WorkloadCompute, generation_compute,
                                               training_compute)
from generatect_kedro.capacity.memory import GIB, Hardware, MemoryEstimate, ZeroSettings, training_static_bytes

__all__ = ["CapacityReport", "StageResult", "check_config", "load_parameters", "summary"]


def load_parameters(project_dir: Path, env: str) -> dict[str, Any]:
    """conf/base + conf/<env> parameters, merged as `kedro run --env <env>` merges them."""
    from kedro.config import OmegaConfigLoader

    from generatect_kedro.settings import CONFIG_LOADER_ARGS

    conf = Path(project_dir) / "conf"
    if not (conf / env).is_dir():
        raise ValueError(f"no configuration environment {env!r}: {conf / env} does not exist")
    loader = OmegaConfigLoader(str(conf), env=env, **CONFIG_LOADER_ARGS)
    return dict(loader["parameters"])


@dataclass
class StageResult:
    """One training stage or generation step's estimate, and whether it is checked against the GPU."""

    kind: str  # training | generation
    name: str
    setup: str
    estimate: MemoryEstimate
    on_gpu: bool
    advice: str = ""
    compute: TrainingCompute | WorkloadCompute | str | None = None  # str: why it was not counted
    bf16: bool = False  # runs under bf16 autocast: the GPU's bf16 peak is its compute ceiling


@dataclass
class CapacityReport:
    """Everything `check-config` prints: target GPU, parameter counts, per-stage estimates, DeepSpeed checks."""

    env: str
    hardware: Hardware
    parameters: list[tuple[str, str, str]]  # (model, count or "external", note)
    stages: list[StageResult]
    generation_setup: str = ""
    generation_on_gpu: bool = True
    generation_compute: VolumeCompute | str | None = None  # str: why it was not counted
    generation_bf16: bool = False
    deepspeed: list[str] = field(default_factory=list)  # one line per validated config
    problems: list[str] = field(default_factory=list)  # config errors found on the way

    def failures(self) -> list[str]:
        """One message per GPU stage over the limit, then the configuration problems."""
        limit, hw = self.hardware.limit_bytes, self.hardware
        messages = []
        for stage in self.stages:
            if stage.on_gpu and stage.estimate.total > limit:
                messages.append(f"{stage.kind} {stage.name}: needs ~{stage.estimate.total / GIB:.1f} GiB per GPU, over "
                                f"the {limit / GIB:.1f} GiB limit ({hw.gpu_memory_gb:g} GiB x headroom "
                                f"{hw.headroom:g}); {stage.advice}")
        return messages + self.problems

    def _compute_lines(self, stage: StageResult) -> list[str]:
        if isinstance(stage.compute, TrainingCompute):
            return stage.compute.describe(self.hardware.bf16_tflops, stage.on_gpu and stage.bf16)
        if isinstance(stage.compute, WorkloadCompute):
            return [stage.compute.describe()]
        return [f"compute: not counted ({stage.compute})"] if stage.compute else []

    def render(self) -> str:
        hw = self.hardware
        lines = [f"generatect check-config --env {self.env}", f"Target GPU: {hw.describe()}", "",
                 "Parameters", f"  {'model':<36}{'parameters':>12}  note"]
        lines += [f"  {name:<36}{count:>12}  {note}" for name, count, note in self.parameters]
        header = (f"  {'stage':<38}{'weights':>8}{'grads':>8}{'optim':>8}{'extra':>8}{'activ.':>8}{'total':>8}"
                  f"{'limit':>8}")
        titles = {"training": "Training, GiB per GPU (activ.: one micro-batch, saved for backward + workspace)",
                  "generation": f"Generation, GiB on one {'GPU' if self.generation_on_gpu else 'CPU'} (all weights "
                                f"+ the step's working set): {self.generation_setup}"}
        for kind in ("training", "generation"):
            rows = [s for s in self.stages if s.kind == kind]
            if not rows:
                continue
            lines += ["", titles[kind], header]
            for stage in rows:
                e = stage.estimate
                verdict = ("fits" if e.total <= hw.limit_bytes else "DOES NOT FIT") if stage.on_gpu else "CPU"
                limit = f"{hw.limit_bytes / GIB:8.1f}" if stage.on_gpu else f"{'-':>8}"
                lines.append(f"  {stage.name[:38]:<38}" + "".join(f"{v / GIB:8.2f}" for v in (
                    e.weights, e.gradients, e.optimizer, e.extra, max(e.activations, e.optimizer_step), e.total))
                    + f"{limit}  {verdict}")
                if stage.setup:
                    lines.append(f"    {stage.setup}")
                lines += [f"    {line}" for line in self._compute_lines(stage)]
            if kind == "generation" and isinstance(self.generation_compute, VolumeCompute):
                gpu_bf16 = self.generation_on_gpu and self.generation_bf16
                lines.append(f"  {self.generation_compute.describe(hw.bf16_tflops, gpu_bf16)}")
            elif kind == "generation" and self.generation_compute:
                lines.append(f"  compute per volume: not counted ({self.generation_compute})")
        if self.deepspeed:
            lines += ["", "DeepSpeed configs validated:"] + [f"  {line}" for line in self.deepspeed]
        return "\n".join(lines)


def _millions(count: int | None) -> str:
    return f"{count / 1e6:.2f} M" if count is not None else "external"


@contextlib.contextmanager
def _world(size: int) -> Iterator[None]:
    """The launcher's WORLD_SIZE for checks that read it (the stage's own DeepSpeed agreement check)."""
    with mock.patch.dict(os.environ, {"WORLD_SIZE": str(size)}):
        yield


def _deepspeed(stage: Any, trainer: Any, project_dir: Path, *, on_gpu: bool, bf16: bool, world: int,
               seen: dict[tuple, tuple[ZeroSettings, str]]) -> tuple[ZeroSettings, str]:
    """Validate the stage's DeepSpeed config as the trainer will at start-up; the ZeRO settings it implies."""
    from generatect_kedro.training.deepspeed_utils import load_deepspeed_config, validate_deepspeed_config

    source = trainer.deepspeed
    if isinstance(source, str) and not Path(source).is_absolute():
        source = str(Path(project_dir) / source)
    key = (repr(source), trainer.batch_size, trainer.grad_accumulation, trainer.grad_clip, on_gpu, bf16, world,
           stage.key)
    if key in seen:
        return seen[key]
    config, label = load_deepspeed_config(source)
    label = os.path.relpath(label, project_dir) if os.path.isabs(label) else label
    validated = validate_deepspeed_config(config, source=label, world_size=world, micro_batch=trainer.batch_size,
                                          grad_accumulation=trainer.grad_accumulation, grad_clip=trainer.grad_clip,
                                          on_gpu=on_gpu, bf16_requested=bf16, has_client_optimizers=True)
    if stage.extra_deepspeed_check is not None:
        # the stage's own check resolves the device and world from the environment: give it the target's
        target = trainer.with_overrides(deepspeed=source, device="cpu",
                                        precision="bf16" if bf16 else trainer.precision)
        with _world(world):
            stage.extra_deepspeed_check(target)
    seen[key] = (ZeroSettings.from_config(validated), label)
    return seen[key]


# Measurements of equal signatures are equal: checking several environments in one process (tests) reuses them.
_TRAINING_MEASUREMENTS: dict[tuple, Any] = {}
_INFERENCE_MEASUREMENTS: dict[tuple, Any] = {}


def _training_advice(stage: Any, estimate: MemoryEstimate, zero: ZeroSettings | None, label: str) -> str:
    """What to change: the micro-batch when activations dominate, else where the weights' state lives."""
    trainer, key = stage.trainer, stage.params_key
    states = estimate.weights + estimate.gradients + estimate.optimizer
    if estimate.activations >= states:
        keys = " and the DeepSpeed config's batch keys" if trainer.backend == "deepspeed" else ""
        options = [f"lower {key}.trainer.batch_size (now {trainer.batch_size}; raise grad_accumulation (now "
                   f"{trainer.grad_accumulation}){keys} to keep the effective batch)", *stage.memory_options]
        return ", or ".join(options)
    if trainer.backend != "deepspeed":
        return (f"train with {key}.trainer.backend: deepspeed and ZeRO stage {min(2, stage.max_zero_stage)}, which "
                "partitions gradients and optimizer state over the GPUs")
    if zero is not None and zero.stage < stage.max_zero_stage:
        return f"raise zero_optimization.stage in {label} (now {zero.stage}) to {stage.max_zero_stage}"
    return "use more GPUs (hardware.gpus) or a larger GPU"


def _training(stage: Any, hardware: Hardware, project_dir: Path, seen: dict, validated: list[str]) -> StageResult:
    from generatect_kedro.capacity.measure import measure_training

    trainer = stage.trainer
    on_gpu = trainer.device != "cpu"
    bf16 = trainer.precision == "bf16" or (trainer.precision == "auto" and on_gpu)
    world = hardware.gpus if on_gpu and trainer.backend != "single" else 1
    zero, label = None, ""
    setup = f"{trainer.backend}"
    if trainer.backend == "deepspeed":
        zero, label = _deepspeed(stage, trainer, project_dir, on_gpu=on_gpu, bf16=bf16, world=world, seen=seen)
        setup += f" {zero.describe()} ({label})"
        line = f"{label}: {stage.name}, world size {world}, micro-batch {trainer.batch_size}"
        if line not in validated:
            validated.append(line)
    setup += (f", {'bf16 autocast' if bf16 else 'fp32'}, micro-batch {trainer.batch_size} x accumulation "
              f"{trainer.grad_accumulation} x {world} GPU(s)")
    if stage.checkpointed:
        setup += ", gradient checkpointing"
    dtype = torch.bfloat16 if bf16 else None
    weights = gradients = optimizer = extra = activations = optimizer_step = 0
    for part in stage.parts:
        bf16_weights = zero is not None and zero.bf16
        if bf16_weights:
            part.module.to(torch.bfloat16)  # the engine's bf16 weights (meta: nothing moves)
        static = training_static_bytes(part.parameters, backend=trainer.backend, zero=zero, world_size=world)
        key = (part.signature, dtype, bool(stage.checkpointed), bf16_weights)
        if not part.signature or key not in _TRAINING_MEASUREMENTS:
            part.module.train()
            _TRAINING_MEASUREMENTS[key] = measure_training(
                part.loss, [p.module for p in stage.parts + stage.frozen], dtype=dtype, recomputed=stage.checkpointed)
        activations = max(activations, _TRAINING_MEASUREMENTS[key].total_bytes)
        weights += static.weights + part.buffer_bytes
        gradients += static.gradients
        optimizer += static.optimizer
        extra += static.extra + 4 * stage.fp32_copies_per_parameter * part.parameters
        optimizer_step = max(optimizer_step, static.optimizer_step)
    extra += sum(4 * f.parameters + f.buffer_bytes for f in stage.frozen)
    estimate = MemoryEstimate(weights=weights, gradients=gradients, optimizer=optimizer, extra=extra,
                              activations=activations, optimizer_step=optimizer_step,
                              reserved=hardware.reserved_bytes if on_gpu else 0)
    return StageResult("training", stage.name, setup, estimate, on_gpu, _training_advice(stage, estimate, zero, label),
                       compute=_counted(lambda: training_compute(stage, dtype)), bf16=bf16)


def _counted(count: Callable[[], Any]) -> Any:
    """A FLOP count, or why it failed: compute figures are informative and never stop the memory check."""
    try:
        return count()
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:100]}" if str(error) else type(error).__name__


def _generation(plan: Any, hardware: Hardware) -> tuple[list[StageResult], VolumeCompute | str]:
    from generatect_kedro.capacity.measure import measure_inference

    weights = sum(4 * sum(p.numel() for p in m.parameters()) + sum(b.numel() * b.element_size() for b in m.buffers())
                  for m in plan.modules.values())
    encoder = plan.text_encoder
    if encoder.parameters is not None and encoder.on_gpu:
        weights += encoder.parameters * torch.empty((), dtype=encoder.dtype).element_size()
    volume = _counted(lambda: generation_compute(plan))
    per_workload = {w.name: w for w in volume.workloads} if isinstance(volume, VolumeCompute) else {}
    results = []
    for workload in plan.workloads:
        key = (workload.signature, plan.autocast)
        if not workload.signature or key not in _INFERENCE_MEASUREMENTS:
            _INFERENCE_MEASUREMENTS[key] = measure_inference(workload.run, workload.modules, dtype=plan.autocast)
        estimate = MemoryEstimate(weights=weights,
                                  activations=_INFERENCE_MEASUREMENTS[key].peak_bytes + workload.extra_bytes,
                                  reserved=hardware.reserved_bytes if plan.on_gpu else 0)
        results.append(StageResult("generation", workload.name, "", estimate, plan.on_gpu, workload.advice,
                                   compute=per_workload.get(workload.name), bf16=plan.autocast is not None))
    return results, volume


def check_config(project_dir: Path, env: str, gpu_memory_gb: float | None = None,
                 bf16_tflops: float | None = None) -> CapacityReport:
    """Size every stage of ``env`` (see the package docstring); config errors raise ValueError. ``gpu_memory_gb``
    and ``bf16_tflops`` override the ``hardware`` block's."""
    from generatect_kedro.capacity.meta_models import build_generation, build_training_stages

    params = load_parameters(project_dir, env)
    if params.get("hardware") is None and gpu_memory_gb is None:
        raise ValueError(f"environment {env!r} has no `hardware` parameters block: add "
                         "conf/<env>/parameters_hardware.yml (see conf/base) or pass --gpu-memory-gb")
    hardware = Hardware.from_params(params.get("hardware"), gpu_memory_gb, bf16_tflops)
    stages = build_training_stages(params)
    plan = build_generation(params)
    rows = [(part.name, _millions(part.parameters), f"{stage.name}, trained")
            for stage in stages for part in stage.parts]
    rows += [(part.name, _millions(part.parameters), f"{stage.name}, frozen")
             for stage in stages for part in stage.frozen]
    encoder = plan.text_encoder
    rows.append(("text encoder", _millions(encoder.parameters), f"{encoder.description}, frozen"))
    setup = (f"{plan.precision}, transformer batch {plan.batch_size}, {plan.slice_batch_size} slices per U-Net call"
             + ("" if encoder.parameters is not None else ", text encoder not counted"))
    report = CapacityReport(env, hardware, rows, [], generation_setup=setup, generation_on_gpu=plan.on_gpu)
    seen: dict[tuple, tuple[ZeroSettings, str]] = {}
    for stage in stages:
        try:
            report.stages.append(_training(stage, hardware, project_dir, seen, report.deepspeed))
        except ValueError as error:
            report.problems.append(f"{stage.name}: {error}")
    generation, report.generation_compute = _generation(plan, hardware)
    report.stages += generation
    report.generation_bf16 = plan.autocast is not None
    return report


def summary(report: CapacityReport) -> str:
    """The closing line: which GPU the configuration fits, or how many stages do not."""
    failures = report.failures()
    if failures:
        return f"{len(failures)} problem(s) for {report.hardware.gpu_name}:\n" + "\n".join(f"  - {f}" for f in failures)
    return f"OK: every GPU stage fits {report.hardware.gpu_name} ({report.hardware.limit_bytes / GIB:.1f} GiB usable)"

