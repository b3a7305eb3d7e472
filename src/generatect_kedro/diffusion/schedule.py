"""Continuous-time Gaussian diffusion in log-SNR form (Kingma et al. 2021; imagen-pytorch, as released).

Time t ∈ [0, 1] maps to a log signal-to-noise ratio λ(t); α² = sigmoid(λ), σ² = sigmoid(−λ), so α² + σ² = 1
and x_t = α·x₀ + σ·ε. The U-Net is fed λ(t), never t, so any sampler may choose its own times.

* cosine (the main schedule): λ(t) = −log(cos((t + 0.008)/1.008 · π/2)^−2 − 1), the log clamping its
  argument at 1e-5 (λ ≤ 11.5). λ(0) ≈ 8.77 (σ ≈ 0.0125), λ(1) ≈ −33.9 in float32.
* linear (low-res conditioning augmentation): λ(t) = −log(expm1(1e-4 + 10·t²)); λ(0.1) ≈ 2.25.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "COSINE",
    "LINEAR",
    "SamplerOutput",
    "cosine_log_snr",
    "linear_log_snr",
    "log_snr_to_alpha_sigma",
    "dynamic_threshold",
    "right_pad_dims_to",
]

ScheduleKind = Literal["cosine", "linear"]


def cosine_log_snr(t: Tensor, s: float = 0.008) -> Tensor:
    return -torch.log((torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1).clamp(min=1e-5))


def linear_log_snr(t: Tensor) -> Tensor:
    return -torch.log(torch.special.expm1(1e-4 + 10 * t**2))


def log_snr_to_alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def right_pad_dims_to(x: Tensor, t: Tensor) -> Tensor:
    """(b,) or () → (b, 1, 1, …) broadcastable against x."""
    return t.reshape(*t.shape, *((1,) * (x.ndim - t.ndim))) if t.ndim else t


def dynamic_threshold(x_start: Tensor, percentile: float = 0.95) -> Tensor:
    """Imagen's dynamic thresholding: s = max(1, percentile of |x₀| per sample); x₀ ← clamp(x₀, −s, s)/s."""
    s = torch.quantile(x_start.flatten(1).abs().float(), percentile, dim=-1).clamp(min=1.0).to(x_start.dtype)
    s = right_pad_dims_to(x_start, s)
    return x_start.clamp(-s, s) / s


@dataclass(frozen=True)
class NoiseSchedule:
    """One continuous-time schedule. ``t`` arguments are floats, 0-d or (b,) tensors."""

    kind: ScheduleKind = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "linear"):
            raise ValueError(f"unknown noise schedule {self.kind!r}")

    def _as_time(self, t: float | Tensor, like: Tensor | None = None) -> Tensor:
        if isinstance(t, Tensor):
            return t if like is None else t.to(like.device)
        return torch.tensor(float(t), dtype=torch.float32, device=None if like is None else like.device)

    def log_snr(self, t: float | Tensor) -> Tensor:
        t = self._as_time(t)
        return cosine_log_snr(t) if self.kind == "cosine" else linear_log_snr(t)

    def alpha_sigma(self, t: float | Tensor, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(α, σ) at t, right-padded to broadcast against ``like`` when given."""
        alpha, sigma = log_snr_to_alpha_sigma(self.log_snr(self._as_time(t, like)))
        if like is not None:
            alpha, sigma = (right_pad_dims_to(like, v).to(like.dtype) for v in (alpha, sigma))
        return alpha, sigma

    def q_sample(self, x_start: Tensor, t: float | Tensor, noise: Tensor) -> Tensor:
        """x_t = α·x₀ + σ·ε."""
        alpha, sigma = self.alpha_sigma(t, x_start)
        return alpha * x_start + sigma * noise

    def v_target(self, x_start: Tensor, t: float | Tensor, noise: Tensor) -> Tensor:
        """v = α·ε − σ·x₀ (Salimans & Ho 2022, App. D): what the U-Net predicts."""
        alpha, sigma = self.alpha_sigma(t, x_start)
        return alpha * noise - sigma * x_start

    def predict_start_from_v(self, x_t: Tensor, t: float | Tensor, v: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t)
        return alpha * x_t - sigma * v

    def predict_noise_from_v(self, x_t: Tensor, t: float | Tensor, v: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t)
        return sigma * x_t + alpha * v

    def predict_start_from_noise(self, x_t: Tensor, t: float | Tensor, noise: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - sigma * noise) / alpha.clamp(min=1e-8)

    def q_posterior(
        self, x_start: Tensor, x_t: Tensor, t: float | Tensor, t_next: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t_next} | x_t, x₀) for t_next < t: (mean, variance, log variance clamped at 1e-20).

        With c = −expm1(λ_t − λ_next): mean = α_next·(x_t·(1 − c)/α_t + c·x₀), variance = σ_next²·c.
        """
        log_snr = right_pad_dims_to(x_t, self.log_snr(self._as_time(t, x_t)))
        log_snr_next = right_pad_dims_to(x_t, self.log_snr(self._as_time(t_next, x_t)))
        alpha, _ = log_snr_to_alpha_sigma(log_snr)
        alpha_next, sigma_next = log_snr_to_alpha_sigma(log_snr_next)
        c = -torch.special.expm1(log_snr - log_snr_next)
        mean = alpha_next * (x_t * (1 - c) / alpha + c * x_start)
        variance = sigma_next**2 * c
        return mean, variance, torch.log(variance.clamp(min=1e-20))


COSINE = NoiseSchedule("cosine")
LINEAR = NoiseSchedule("linear")


@dataclass
class SamplerOutput:
    """What a sampler's ``step`` returns (diffusers' ``SchedulerOutput``): x at the next time, and its x₀ guess."""

    prev_sample: Tensor
    pred_original_sample: Tensor
