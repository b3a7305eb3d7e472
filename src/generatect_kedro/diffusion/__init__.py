"""Diffusion for the super-resolution stage: schedules, samplers (one per file), guidance, loss, volume upsampling.

Network-agnostic: the U-Net (``models.unet``) is just a callable ``(x_t, log_snr, **conditioning) → v``.
Samplers follow the diffusers contract ``set_timesteps(n)`` / ``step(model_output, t, sample)``.
"""

from generatect_kedro.diffusion.ancestral import AncestralSampler
from generatect_kedro.diffusion.dpm_solver import DPMSolverPlusPlus2M, DPMSolverPlusPlus2MSDE
from generatect_kedro.diffusion.guidance import GuidedDenoiser
from generatect_kedro.diffusion.loss import LossDraws, SuperresLossOutput, draw_loss_randomness, superres_v_loss
from generatect_kedro.diffusion.schedule import COSINE, LINEAR, NoiseSchedule, SamplerOutput, dynamic_threshold
from generatect_kedro.diffusion.upsample import (
    Cascade,
    CascadeStage,
    GeneratorNoise,
    PerSampleNoise,
    make_sampler,
    sample_loop,
    slice_seeds_for,
    upsample_slices,
    upsample_volume,
)

__all__ = [
    "COSINE",
    "LINEAR",
    "AncestralSampler",
    "Cascade",
    "CascadeStage",
    "DPMSolverPlusPlus2M",
    "DPMSolverPlusPlus2MSDE",
    "GeneratorNoise",
    "GuidedDenoiser",
    "LossDraws",
    "NoiseSchedule",
    "PerSampleNoise",
    "SamplerOutput",
    "SuperresLossOutput",
    "draw_loss_randomness",
    "dynamic_threshold",
    "make_sampler",
    "sample_loop",
    "slice_seeds_for",
    "superres_v_loss",
    "upsample_slices",
    "upsample_volume",
]
