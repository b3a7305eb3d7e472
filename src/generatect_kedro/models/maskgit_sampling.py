"""Iterative MaskGIT decoding of a (t, h, w) CT token grid from text (the release's ``sample``, generalised).

Start fully masked; at step s = 0 … steps−1:
  1. s > 0: re-mask the round(N·cos(π/2·s/steps)) (≥ 1) highest-scoring positions;
  2. guided logits = null + (cond − null)·cond_scale (one batched pass of 2b);
  3. pred = argmax(logits / max(T_s, 1e-10) + Gumbel noise), T_s = temperature·(steps − s − 1)/steps;
  4. masked positions take pred;
  5. score for the next step: 1 − softmax(logits)[pred] where masked now, −1e4 elsewhere (only just-
     predicted tokens can be re-masked), or, with a token critic, its guided "wrong token" logits plus
     uniform noise noise_scale·(U − ½)·anneal(s) (any token can be re-masked).
All randomness comes from one ``torch.Generator`` (Gumbel uniforms (b, N, K) per step, then the critic's
uniforms): the same seed gives the same ids. The position bias and text keys/values are computed once per
call (``use_cache``), not once per step. Under autocast the models' logits are cast to float32, so the noise,
temperature, softmax and re-masking arithmetic above stay in fp32 whatever precision the transformer ran in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from generatect_kedro.models.maskgit import GridShape, MaskGIT, MaskGITContext

__all__ = ["MaskGITSamplerConfig", "SamplingStep", "gumbel_noise", "num_masked_at_step", "sample_tokens"]

NoiseFn = Callable[[int, Tensor], Tensor]  # (step, guided logits) → Gumbel noise of the same shape


@dataclass(frozen=True)
class MaskGITSamplerConfig:
    """Sampling settings; defaults are the release inference's (18 steps, T 0.9, guidance 5)."""

    steps: int = 18
    temperature: float = 0.9
    cond_scale: float = 5.0
    use_cache: bool = True
    critic_cond_scale: float | None = None  # None: cond_scale
    critic_noise_scale: float = 1.0  # the Token-Critic paper's K (the release's default)
    critic_noise_schedule: Literal["fixed", "decay", "increase"] = "decay"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.critic_noise_schedule not in ("fixed", "decay", "increase"):
            raise ValueError(f"unknown critic_noise_schedule {self.critic_noise_schedule!r}")

    def temperature_at(self, step: int) -> float:
        return self.temperature * ((self.steps - (step + 1)) / self.steps)


@dataclass
class SamplingStep:
    """What one step saw and did (for tests, debugging and visualisation); tensors are not copies."""

    step: int
    input_ids: Tensor  # (b, N) ids fed to the model, mask_id where masked
    logits: Tensor  # (b, N, K) guided logits
    noise: Tensor  # (b, N, K) Gumbel noise
    mask: Tensor  # (b, N) positions predicted at this step
    ids: Tensor  # (b, N) ids after the step


def gumbel_noise(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """−log(−log(U + ε) + ε), ε = 1e-10, U ~ U[0, 1): the release's Gumbel noise, drawn from ``generator``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


def num_masked_at_step(num_tokens: int, step: int, steps: int) -> int:
    """round(N·cos(π/2·step/steps)), at least 1, computed in float32 as the release does."""
    time = torch.full((1,), step / steps)
    return int((num_tokens * torch.cos(time * math.pi * 0.5)).round().long().clamp(min=1).item())


def _critic_anneal(config: MaskGITSamplerConfig, step: int) -> float:
    if config.critic_noise_schedule == "fixed":
        return 1.0
    if config.critic_noise_schedule == "decay":
        return (config.steps - (step + 1)) / config.steps
    return (step + 1) / config.steps


@torch.no_grad()
def sample_tokens(
    model: MaskGIT,
    text_embeds: Tensor | None,
    text_mask: Tensor | None,
    grid_shape: GridShape,
    *,
    config: MaskGITSamplerConfig | None = None,
    generator: torch.Generator | None = None,
    critic: MaskGIT | None = None,
    batch_size: int | None = None,
    noise_fn: NoiseFn | None = None,
    on_step: Callable[[SamplingStep], None] | None = None,
) -> Tensor:
    """Sample token ids (b, t, h, w) for text (b, j, dim_context) + mask (b, j); ``text_embeds=None`` with
    ``batch_size`` samples unconditionally. ``noise_fn`` replaces the Gumbel draws (tests), ``on_step`` sees
    every step. Models are put in eval mode for the call and restored afterwards."""
    config = config or MaskGITSamplerConfig()
    grid = tuple(int(s) for s in grid_shape)
    n = math.prod(grid)
    if text_embeds is None:
        if batch_size is None:
            raise ValueError("unconditional sampling needs batch_size")
        b = batch_size
    else:
        b = text_embeds.shape[0]
    device = model.pos_emb.weight.device
    guided = text_embeds is not None and not model.config.unconditional and config.cond_scale != 1
    critic_scale = config.cond_scale if config.critic_cond_scale is None else config.critic_cond_scale

    modules = [m for m in (model, critic) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        ctx = model.prepare_context(text_embeds, text_mask, grid, guidance=guided) if config.use_cache else None
        critic_guided = (
            critic is not None and text_embeds is not None and not critic.config.unconditional and critic_scale != 1
        )
        critic_ctx = None
        if critic is not None and config.use_cache:
            critic_ctx = critic.prepare_context(text_embeds, text_mask, grid, guidance=critic_guided)

        ids = torch.full((b, n), model.mask_id, dtype=torch.long, device=device)
        mask = torch.ones((b, n), dtype=torch.bool, device=device)
        scores: Tensor | None = None
        for step in range(config.steps):
            if step > 0 and scores is not None:
                indices = scores.topk(num_masked_at_step(n, step, config.steps), dim=-1).indices
                mask = torch.zeros((b, n), dtype=torch.bool, device=device).scatter(1, indices, True)
            ids = torch.where(mask, model.mask_id, ids)
            input_ids = ids
            logits = _logits(model, ids, text_embeds, text_mask, grid, ctx, config.cond_scale, guided).float()

            if noise_fn is not None:
                noise = noise_fn(step, logits)
            else:
                noise = gumbel_noise(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            pred = (logits / max(config.temperature_at(step), 1e-10) + noise).argmax(dim=-1)
            ids = torch.where(mask, pred, ids)
            if on_step is not None:
                on_step(SamplingStep(step, input_ids, logits, noise, mask, ids))

            if step == config.steps - 1:
                break
            if critic is not None:
                scores = _logits(critic, ids, text_embeds, text_mask, grid, critic_ctx, critic_scale,
                                 critic_guided).float()
                uniform = torch.rand(scores.shape, generator=generator, device=device, dtype=scores.dtype)
                scores = scores + config.critic_noise_scale * (uniform - 0.5) * _critic_anneal(config, step)
            else:
                probs = logits.softmax(dim=-1)
                confidence = probs.gather(-1, pred[..., None])[..., 0]
                scores = torch.where(mask, 1 - confidence, -1e4)
        return ids.reshape(b, *grid)
    finally:
        for m, training in zip(modules, was_training, strict=True):
            m.train(training)


def _logits(
    model: MaskGIT,
    ids: Tensor,
    text_embeds: Tensor | None,
    text_mask: Tensor | None,
    grid: GridShape,
    ctx: MaskGITContext | None,
    cond_scale: float,
    guided: bool,
) -> Tensor:
    if ctx is not None:
        if guided:
            return model.forward_with_cond_scale(ids, grid_shape=grid, cond_scale=cond_scale, context=ctx)
        return model(ids, grid_shape=grid, context=ctx)
    if guided:
        return model.forward_with_cond_scale(ids, text_embeds, text_mask, grid_shape=grid, cond_scale=cond_scale)
    return model(ids, text_embeds, text_mask, grid_shape=grid)
