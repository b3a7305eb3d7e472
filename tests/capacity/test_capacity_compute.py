"""`capacity.compute` and the compute lines of `check-config`: FLOPs per training step and per generated volume,
and the time floors at the GPU's bf16 peak."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from generatect_kedro.capacity import Hardware, check_config, load_parameters
from generatect_kedro.capacity.compute import (MFU_GOAL, TrainingCompute, VolumeCompute, duration,
                                               generation_compute, seconds_at)
from generatect_kedro.capacity.meta_models import Repetition, Workload, build_generation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_params() -> dict:
    return load_parameters(ROOT, "demo")


@pytest.fixture(scope="module")
def demo_report():
    return check_config(ROOT, "demo")


def test_demo_report_has_compute_lines(demo_report):
    text = demo_report.render()
    training = [s for s in demo_report.stages if s.kind == "training"]
    assert training and all(isinstance(s.compute, TrainingCompute) and s.compute.step_flops > 0 for s in training)
    assert text.count("TFLOP per optimizer step per GPU") == len(training)
    generation = [s for s in demo_report.stages if s.kind == "generation"]
    assert all(s.compute is not None and s.compute.volume_flops > 0 for s in generation)
    assert text.count(" TFLOP per call x ") == len(generation)
    assert isinstance(demo_report.generation_compute, VolumeCompute)
    volume = demo_report.generation_compute.flops
    assert volume == pytest.approx(sum(s.compute.volume_flops for s in generation))
    # the demo generates on the CPU: the GPU's bf16 peak says nothing about it; its CT-ViT trains on a GPU
    volume_line = next(line for line in text.splitlines() if "compute per volume:" in line)
    assert "peak" not in volume_line
    ctvit = next(s for s in training if s.name.startswith("ctvit"))
    step_time = seconds_at(ctvit.compute.step_flops, 312, MFU_GOAL)
    assert f"at 40% of peak {duration(step_time)}" in text


def test_training_flops_follow_micro_batch_and_accumulation(demo_report):
    """An optimizer step is grad_accumulation micro-batches of every trained part's forward + backward."""
    for stage in (s for s in demo_report.stages if s.kind == "training"):
        compute = stage.compute
        assert compute.step_flops == compute.grad_accumulation * sum(f for _, f in compute.part_flops)
    ctvit = next(s.compute for s in demo_report.stages if s.name.startswith("ctvit"))
    assert [name for name, _ in ctvit.part_flops] == ["CT-ViT", "CT-ViT discriminator"]


def _superres_volume_flops(params: dict, steps: int) -> list[tuple[float, float]]:
    params = copy.deepcopy(params)
    params["generation"]["sampler"]["superres"] = {"steps": steps}
    plan = build_generation(params)
    stages = [w for w in generation_compute(plan).workloads if w.name.startswith("superres")]
    assert stages
    return [(w.call_flops, w.volume_flops) for w in stages]


def test_generation_flops_are_linear_in_the_superres_steps(demo_params):
    few, many = _superres_volume_flops(demo_params, 4), _superres_volume_flops(demo_params, 12)
    for (call_few, volume_few), (call_many, volume_many) in zip(few, many):
        assert call_few == call_many  # one U-Net call does not depend on the schedule
        assert volume_many == pytest.approx(3 * volume_few)


class _Plan:
    """The two fields `generation_compute` reads from a `GenerationPlan`."""

    def __init__(self, workloads: list | None = None, autocast: torch.dtype | None = None) -> None:
        self.workloads, self.autocast = workloads or [], autocast


def test_transformer_volume_flops_count_the_context_once_per_batch():
    """FLOPs linear in the steps: ``run(1)`` = context + step, ``run(2)`` = context + 2 steps."""
    context_flops, step_flops = 2 * 4 * 8 * 8, 2 * 4 * 8 * 16  # one (4x8)@(8x8), one (4x8)@(8x16)
    a, b, c = torch.randn(4, 8), torch.randn(8, 8), torch.randn(8, 16)

    def run(steps: int = 2) -> None:
        a @ b
        for _ in range(steps):
            a @ c

    workload = Workload("transformer sampling (batch 3)", run, [], signature="",
                        repetition=Repetition("sampling", steps=18, per_call=3))
    (compute,) = generation_compute(_Plan([workload])).workloads
    assert compute.call_flops == step_flops
    assert compute.calls_per_volume == 6
    assert compute.volume_flops == pytest.approx((context_flops + 18 * step_flops) / 3)


def test_superres_calls_and_flops_per_volume():
    weight, x = torch.randn(16, 16), torch.randn(5, 16)  # one call on 5 slices

    workload = Workload("superres stage 1", lambda: x @ weight, [],
                        repetition=Repetition("slices", steps=10, per_call=5, slices=17))
    (compute,) = generation_compute(_Plan([workload])).workloads
    assert compute.call_flops == 2 * 5 * 16 * 16
    assert compute.calls_per_volume == 10 * 4  # ceil(17 / 5) calls per step
    assert compute.volume_flops == pytest.approx(10 * 17 * 2 * 16 * 16)  # FLOPs follow the slices


def test_time_floor_is_flops_over_peak():
    assert seconds_at(3e12, 1.0) == 3.0
    assert seconds_at(624e12, 312) == pytest.approx(2.0)
    assert seconds_at(624e12, 312, 0.4) == pytest.approx(5.0)
    assert duration(0.0237) == "23.7 ms" and duration(7.912) == "7.91 s"


def test_peak_from_hardware_and_no_time_lines_without_it(demo_report):
    assert Hardware.from_params({"bf16_tflops": 989.5}).bf16_tflops == 989.5
    assert Hardware.from_params({"bf16_tflops": 312}, bf16_tflops=121).bf16_tflops == 121  # --bf16-tflops
    assert Hardware.from_params({}).bf16_tflops is None
    with pytest.raises(ValueError, match="bf16_tflops"):
        Hardware(bf16_tflops=0)
    without = copy.copy(demo_report)
    without.hardware = replace(demo_report.hardware, bf16_tflops=None)
    text = without.render()
    assert "TFLOP per optimizer step per GPU" in text and "compute per volume:" in text
    assert "peak" not in text


def test_unet_call_flops_follow_the_slices_and_double_with_guidance():
    """Why FLOPs per volume scale a call's count by slices / slices-per-call, and why a guided call is measured as
    it runs: classifier-free guidance evaluates the U-Net twice (one batched pass of 2b)."""
    from test_capacity_measure import tiny_unet

    from generatect_kedro.capacity.flops import count_flops
    from generatect_kedro.diffusion.guidance import GuidedDenoiser

    unet = tiny_unet("meta").eval()
    meta = torch.device("meta")

    def call(slices: int, cond_scale: float) -> int:
        text = torch.empty(1, 20, 384, device=meta).expand(slices, -1, -1)
        mask = torch.ones(1, 20, dtype=torch.bool, device=meta).expand(slices, -1)
        denoiser = GuidedDenoiser(unet, lowres_cond_img=torch.empty(slices, 1, 32, 32, device=meta),
                                  lowres_noise_log_snr=torch.empty(slices, device=meta), text_embeds=text,
                                  text_mask=mask, cond_scale=cond_scale)
        x, log_snr = torch.empty(slices, 1, 32, 32, device=meta), torch.empty(slices, device=meta)
        return count_flops(lambda: denoiser(x, log_snr))

    one = call(1, 1.0)
    assert call(3, 1.0) == 3 * one
    assert call(3, 5.0) == 6 * one
