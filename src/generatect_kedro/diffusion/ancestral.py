"""The release's sampler: ancestral sampling of the continuous-time posterior q(x_s | x_t, x̂₀) (25 steps in GenerateCT).

Times are ``linspace(1, 0, n + 1)``; at each t the U-Net's v gives x̂₀ = α·x_t − σ·v, dynamically thresholded
(0.95 quantile, as released), and x_s = posterior mean + exp(½·log variance)·ε. The last step lands on t = 0
without noise. The release draws ε at every step (the last one multiplied by 0); the loop in
:mod:`~generatect_kedro.diffusion.upsample` does the same so a seeded run consumes the same random stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from generatect_kedro.diffusion.schedule import COSINE, NoiseSchedule, SamplerOutput, dynamic_threshold

__all__ = ["AncestralSampler", "time_index"]


def time_index(times: Tensor, t: float | Tensor) -> Tensor:
    """Index (per element of t) of t in the ascending-index, descending-value time grid ``times``."""
    t = torch.as_tensor(t, dtype=times.dtype, device=times.device).reshape(-1)
    return (times.reshape(-1, 1) - t.reshape(1, -1)).abs().argmin(dim=0)


class AncestralSampler:
    """diffusers-style: ``set_timesteps(n)``, then for t in ``timesteps``: model → ``step(v, t, x)``."""

    stochastic = True  # step() needs fresh Gaussian noise every call
    order = 1

    def __init__(
        self,
        schedule: NoiseSchedule = COSINE,
        *,
        dynamic_thresholding: bool = True,
        threshold_percentile: float = 0.95,
    ):
        self.schedule = schedule
        self.dynamic_thresholding = dynamic_thresholding
        self.threshold_percentile = threshold_percentile
        self.times: Tensor | None = None
        self.timesteps: Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        self.times = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)
        self.timesteps = self.times[:-1]

    def model_condition(self, t: float | Tensor) -> Tensor:
        """What the network is fed for time t: the log-SNR."""
        return self.schedule.log_snr(t)

    def next_time(self, t: float | Tensor) -> Tensor:
        if self.times is None:
            raise RuntimeError("call set_timesteps() first")
        index = time_index(self.times[:-1], t)
        t_next = self.times[index + 1]
        return t_next if isinstance(t, Tensor) and t.ndim else t_next.reshape(())

    def predict_start(self, model_output: Tensor, t: float | Tensor, sample: Tensor) -> Tensor:
        x_start = self.schedule.predict_start_from_v(sample, t, model_output)
        if self.dynamic_thresholding:
            return dynamic_threshold(x_start, self.threshold_percentile)
        return x_start.clamp(-1.0, 1.0)

    def step(
        self,
        model_output: Tensor,
        t: float | Tensor,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> SamplerOutput:
        """One step t → next time; ``model_output`` is v. ``noise`` (same shape as sample) wins over ``generator``."""
        t_next = self.next_time(t)
        x_start = self.predict_start(model_output, t, sample)
        mean, _, log_variance = self.schedule.q_posterior(x_start, sample, t, t_next)
        if noise is None:
            device = generator.device if generator is not None else sample.device
            noise = torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype)
        is_last = (torch.as_tensor(t_next, device=sample.device) == 0).to(sample.dtype)
        nonzero = 1.0 - (is_last.reshape(-1, *((1,) * (sample.ndim - 1))) if is_last.ndim else is_last)
        prev = mean + nonzero * (0.5 * log_variance).exp() * noise.to(sample.device, sample.dtype)
        return SamplerOutput(prev_sample=prev, pred_original_sample=x_start)
