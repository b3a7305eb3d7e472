"""Slice-wise diffusion super-resolution of a volume: the sampling loop, seeded noise, cascades.

The release upsamples the 201 axial slices one at a time (batch 1). Here slices run in configurable
batches; every slice still gets its own random stream, so **the same seed gives the same volume whatever
``slice_batch_size``** (up to float summation order of batched convolutions, ~1e-6):

* a ``generator`` (or the global RNG) draws one 63-bit seed per slice, in slice order;
* slice k's ``torch.Generator`` (on ``noise_device``, CPU by default, so CPU and GPU runs draw the same
  numbers) then draws, in the release's order: the low-res augmentation noise, x_T, and one ε per
  ancestral step (the last one unused, as released). Deterministic samplers draw no step noise.

For one batch of 2-D slices, :func:`upsample_slices` with a :class:`GeneratorNoise` instead draws each
noise as one batch tensor from one generator: that is exactly the release's stream for ``Superres.sample``
after ``torch.manual_seed`` (the fixture test checks it bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.diffusion.ancestral import AncestralSampler
from generatect_kedro.diffusion.dpm_solver import DPMSolverPlusPlus2M, DPMSolverPlusPlus2MSDE
from generatect_kedro.diffusion.guidance import GuidedDenoiser
from generatect_kedro.diffusion.schedule import LINEAR, NoiseSchedule, SamplerOutput

__all__ = [
    "Cascade",
    "CascadeStage",
    "GeneratorNoise",
    "NoiseSource",
    "PerSampleNoise",
    "Sampler",
    "make_sampler",
    "sample_loop",
    "slice_seeds_for",
    "upsample_slices",
    "upsample_volume",
]

SAMPLERS: dict[str, type] = {
    "ancestral": AncestralSampler, "dpm++2m": DPMSolverPlusPlus2M, "dpm++2m-sde": DPMSolverPlusPlus2MSDE,
}
StepCallback = Callable[[int, Tensor, Tensor, Tensor, SamplerOutput], None]


class Sampler(Protocol):
    stochastic: bool
    timesteps: Tensor | None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None: ...
    def model_condition(self, t: float | Tensor) -> Tensor: ...
    def step(self, model_output: Tensor, t: float | Tensor, sample: Tensor, *, generator=None,
             noise: Tensor | None = None) -> SamplerOutput: ...


class NoiseSource(Protocol):
    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        """Standard normal noise of shape (batch, *shape) for the batch this source serves."""
        ...


class GeneratorNoise:
    """One generator, one (batch, …) draw per call: the release's stream for a batch."""

    def __init__(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        self.batch, self.generator, self.device = batch, generator, torch.device(device)

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        draw_device = self.generator.device if self.generator is not None else self.device
        return torch.randn((self.batch, *shape), generator=self.generator, device=draw_device).to(self.device)


class PerSampleNoise:
    """One generator per sample (seeded from ``seeds``): draws do not depend on how samples are batched."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", noise_device: str = "cpu"):
        self.generators = [torch.Generator(noise_device).manual_seed(int(s)) for s in seeds]
        self.device, self.noise_device = torch.device(device), noise_device

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        draws = [torch.randn(shape, generator=g, device=self.noise_device) for g in self.generators]
        return torch.stack(draws).to(self.device)


def make_sampler(sampler: str | Sampler, **kwargs) -> Sampler:
    """'ancestral' (the release's) or 'dpm++2m', built with ``kwargs``; an instance is returned as is (its own
    settings, e.g. ``dynamic_thresholding``, win: ``kwargs`` are ignored)."""
    if not isinstance(sampler, str):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](**kwargs)


@torch.no_grad()
def sample_loop(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    sampler: Sampler,
    shape: tuple[int, ...],
    *,
    steps: int,
    noise: NoiseSource,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
) -> Tensor:
    """x_T ~ noise → ``steps`` sampler steps with ``denoiser(x, log_snr) → v`` → x₀ clamped to [−1, 1]."""
    sampler.set_timesteps(steps, device=device)
    x = noise(tuple(shape[1:])).to(device)
    for i, t in enumerate(sampler.timesteps):
        v = denoiser(x, sampler.model_condition(t).to(x.dtype))
        step_noise = noise(tuple(shape[1:])) if sampler.stochastic else None
        out = sampler.step(v.to(x.dtype), t, x, noise=step_noise)
        if callback is not None:
            callback(i, t, x, v, out)
        x = out.prev_sample
    return x.clamp(-1.0, 1.0)


def _text_for_batch(text_embeds: Tensor | None, text_mask: Tensor | None, batch: int, device: torch.device):
    if text_embeds is None:
        return None, None
    if text_embeds.ndim == 2:
        text_embeds = text_embeds[None]
    if text_mask is None:
        text_mask = (text_embeds != 0).any(dim=-1)  # the release's default
    elif text_mask.ndim == 1:
        text_mask = text_mask[None]
    if text_embeds.shape[0] == 1:
        text_embeds, text_mask = text_embeds.expand(batch, -1, -1), text_mask.expand(batch, -1)
    return text_embeds.to(device), text_mask.to(device)


@torch.no_grad()
def upsample_slices(
    unet: nn.Module,
    lowres: Tensor,
    text_embeds: Tensor | None = None,
    text_mask: Tensor | None = None,
    *,
    size: tuple[int, int],
    sampler: str | Sampler = "ancestral",
    steps: int = 25,
    lowres_noise_level: float = 0.1,
    cond_scale: float = 1.0,
    noise: NoiseSource,
    resize_mode: str = "nearest",
    lowres_schedule: NoiseSchedule = LINEAR,
    callback: StepCallback | None = None,
    dynamic_thresholding: bool = True,
    threshold_percentile: float = 0.95,
) -> Tensor:
    """lowres (b, c, h, w) in [−1, 1] → (b, c, *size) in [−1, 1]; text (b|1, n, e) or (n, e), shared if 1.

    The condition is resized (nearest in the release; not clamped at sampling, as released), noised on
    the linear schedule at ``lowres_noise_level``, and both it and that level are fed to the U-Net.
    ``dynamic_thresholding`` / ``threshold_percentile`` configure a sampler given by name (as released: on,
    0.95); off, the ancestral sampler clamps x̂₀ to [−1, 1] (as released) and DPM-Solver++ leaves it as is.
    """
    device = lowres.device
    b, c = lowres.shape[:2]
    same_size = tuple(lowres.shape[-2:]) == tuple(size)
    lowres_up = lowres if same_size else F.interpolate(lowres, size=size, mode=resize_mode)
    aug_times = torch.full((b,), float(lowres_noise_level), device=device)
    lowres_noisy = lowres_schedule.q_sample(lowres_up, aug_times, noise((c, *size)).to(device))
    text_embeds, text_mask = _text_for_batch(text_embeds, text_mask, b, device)
    denoiser = GuidedDenoiser(
        unet, lowres_cond_img=lowres_noisy, lowres_noise_log_snr=lowres_schedule.log_snr(aug_times),
        text_embeds=text_embeds, text_mask=text_mask, cond_scale=cond_scale,
    )
    sampler = make_sampler(sampler, dynamic_thresholding=dynamic_thresholding,
                           threshold_percentile=threshold_percentile)
    return sample_loop(denoiser, sampler, (b, c, *size), steps=steps, noise=noise, device=device,
                       callback=callback)


def slice_seeds_for(num_slices: int, generator: torch.Generator | None = None) -> list[int]:
    """One 63-bit seed per slice, in slice order, from ``generator`` (or the global RNG)."""
    return torch.randint(0, 2**63 - 1, (num_slices,), generator=generator).tolist()


def _module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def upsample_volume(
    unet: nn.Module,
    lowres_volume: Tensor,
    text_embeds: Tensor | None = None,
    text_mask: Tensor | None = None,
    *,
    scale: int = 4,
    sampler: str | Sampler = "ancestral",
    steps: int = 25,
    slice_batch_size: int = 8,
    lowres_noise_level: float = 0.1,
    cond_scale: float = 1.0,
    resize_mode: str = "nearest",
    generator: torch.Generator | None = None,
    slice_seeds: Sequence[int] | None = None,
    noise_device: str = "cpu",
    dynamic_thresholding: bool = True,
    threshold_percentile: float = 0.95,
) -> Tensor:
    """(D, h, w) in [−1, 1] → (D, h·scale, w·scale) in [−1, 1], slices in batches of ``slice_batch_size``.

    Runs on the U-Net's device. text_embeds (1, n, e) or (n, e): one prompt for the whole volume.
    ``slice_seeds`` (one per slice) replaces the draw from ``generator``: to shard a volume over ranks, draw
    :func:`slice_seeds_for` once and give each rank its slices and their seeds; the result is unchanged.
    ``dynamic_thresholding`` / ``threshold_percentile``: see :func:`upsample_slices`.
    """
    if lowres_volume.ndim != 3:
        raise ValueError(f"expected a (D, h, w) volume, got shape {tuple(lowres_volume.shape)}")
    if slice_batch_size < 1:
        raise ValueError("slice_batch_size must be >= 1")
    device = _module_device(unet)
    depth, h, w = lowres_volume.shape
    size = (h * scale, w * scale)
    seeds = list(slice_seeds) if slice_seeds is not None else slice_seeds_for(depth, generator)
    if len(seeds) != depth:
        raise ValueError(f"{len(seeds)} slice seeds for {depth} slices")
    sampler = make_sampler(sampler, dynamic_thresholding=dynamic_thresholding,
                           threshold_percentile=threshold_percentile)
    out = torch.empty(depth, *size, device=device)
    for start in range(0, depth, slice_batch_size):
        stop = min(depth, start + slice_batch_size)
        lowres = lowres_volume[start:stop, None].to(device=device, dtype=torch.float32)
        out[start:stop] = upsample_slices(
            unet, lowres, text_embeds, text_mask, size=size, sampler=sampler, steps=steps,
            lowres_noise_level=lowres_noise_level, cond_scale=cond_scale, resize_mode=resize_mode,
            noise=PerSampleNoise(seeds[start:stop], device=device, noise_device=noise_device),
        )[:, 0]
    return out


@dataclass
class CascadeStage:
    """One super-resolution stage: a U-Net and how to sample it."""

    unet: nn.Module
    scale: int = 4
    sampler: str | Sampler = "ancestral"  # a name, or an instance (its state is reset per slice batch)
    steps: int = 25
    lowres_noise_level: float = 0.1
    cond_scale: float = 1.0
    resize_mode: str = "nearest"
    # x̂₀ at every sampler step: Imagen's dynamic thresholding at this quantile of |x̂₀| (as released), or, off,
    # a plain clamp to [−1, 1] (ancestral) / nothing (DPM-Solver++). Only for a sampler given by name.
    dynamic_thresholding: bool = True
    threshold_percentile: float = 0.95


class Cascade(nn.Module):
    """Any number of stages applied in turn to a (D, h, w) volume (the paper's 3SCM: 128 → 256 → 512)."""

    def __init__(self, stages: Sequence[CascadeStage]):
        super().__init__()
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        self.stages = list(stages)
        self.unets = nn.ModuleList(s.unet for s in self.stages)  # .to(device) / state_dict for all stages

    @property
    def scale(self) -> int:
        total = 1
        for stage in self.stages:
            total *= stage.scale
        return total

    def forward(
        self,
        lowres_volume: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        slice_batch_size: int = 8,
        generator: torch.Generator | None = None,
        noise_device: str = "cpu",
    ) -> Tensor:
        """(D, h, w) → (D, h·scale, w·scale); one seed per stage from ``generator``, then per-slice streams."""
        stage_seeds = torch.randint(0, 2**63 - 1, (len(self.stages),), generator=generator).tolist()
        volume = lowres_volume
        for stage, seed in zip(self.stages, stage_seeds):
            volume = upsample_volume(
                stage.unet, volume, text_embeds, text_mask, scale=stage.scale, sampler=stage.sampler,
                steps=stage.steps, slice_batch_size=slice_batch_size, lowres_noise_level=stage.lowres_noise_level,
                cond_scale=stage.cond_scale, resize_mode=stage.resize_mode,
                generator=torch.Generator().manual_seed(seed), noise_device=noise_device,
                dynamic_thresholding=stage.dynamic_thresholding, threshold_percentile=stage.threshold_percentile,
            )
        return volume
