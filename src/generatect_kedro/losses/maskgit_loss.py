"""MaskGIT training objectives: masked-token cross-entropy with real text dropout, and the token-critic BCE.

Masking (the release's, after MaskGIT): per sample a level k ~ U{0, …, levels−1} gives the mask fraction
p = cos(π/2 · k/levels) ("discrete", levels = 18 = the sampling steps), or r ~ U(0, 1) gives p = cos(π/2 · r)
("continuous"); then round(p·n) positions (at least 1) are chosen uniformly at random. Draw order, from
one ``torch.Generator``: levels (b), position uniforms (b, n), then the model's per-sample text-drop
uniforms (b). With the global RNG seeded as the release's trainer seeds it, that is the release's order.

``cond_drop_prob`` is real here (default 0.1). The release sets it to 0 inside its forward, so its
"null" branch, which inference uses with cond_scale 5, was never trained on its own.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.models.maskgit import GridShape, MaskGIT, text_keep_mask
from generatect_kedro.models.maskgit_sampling import gumbel_noise
from generatect_kedro.models.token_critic import TokenCritic

__all__ = ["MaskSchedule", "mask_fraction", "draw_token_mask", "masked_token_loss", "token_critic_loss", "unwrap"]

MaskSchedule = Literal["discrete", "continuous"]


def mask_fraction(
    batch: int,
    *,
    levels: int = 18,
    schedule: MaskSchedule = "discrete",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample fraction of tokens to mask (b,), float32, from the cosine schedule."""
    if schedule == "discrete":
        if levels < 1:
            raise ValueError(f"levels must be ≥ 1, got {levels}")
        level = torch.randint(0, levels, (batch,), generator=generator, device=device)
        return torch.cos(level * math.pi * 0.5 / levels)  # written as the release writes it (float32)
    if schedule == "continuous":
        return torch.cos(torch.rand((batch,), generator=generator, device=device) * math.pi * 0.5)
    raise ValueError(f"unknown mask schedule {schedule!r}")


def draw_token_mask(
    batch: int,
    num_tokens: int,
    *,
    levels: int = 18,
    schedule: MaskSchedule = "discrete",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(b, n) bool, True = masked: round(p·n) ≥ 1 uniformly chosen positions per sample."""
    prob = mask_fraction(batch, levels=levels, schedule=schedule, generator=generator, device=device)
    num_masked = (prob * num_tokens).round().clamp(min=1)
    order = torch.rand((batch, num_tokens), generator=generator, device=device).argsort(dim=-1)
    return order < num_masked[:, None]


def unwrap(model: nn.Module) -> MaskGIT:
    """The MaskGIT inside a DDP / DeepSpeed / compile wrapper (attribute access only; calls go to the wrapper)."""
    while not isinstance(model, MaskGIT):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a MaskGIT (possibly wrapped), got {type(model).__name__}")
        model = inner
    return model


def _flat(model: MaskGIT, ids: Tensor, grid_shape: GridShape | None) -> tuple[Tensor, GridShape]:
    flat, grid = model.flatten_ids(ids, grid_shape)
    if flat.dtype != torch.long:
        raise TypeError(f"token ids must be int64, got {flat.dtype}")
    if (flat >= model.mask_id).any() or (flat < 0).any():
        raise ValueError(f"ground-truth ids must lie in [0, {model.mask_id})")
    return flat, grid


def _drop_text(
    text_embeds: Tensor | None, text_mask: Tensor | None, cond_drop_prob: float, generator: torch.Generator | None
) -> tuple[Tensor | None, Tensor]:
    """Text mask with whole texts dropped per sample (what ``MaskGIT.forward(cond_drop_prob=…)`` does), and
    which samples kept any text. Done here so the model is called through its (possibly wrapped) forward."""
    if text_embeds is None:
        return None, torch.zeros(0, dtype=torch.bool)
    if text_mask is None:
        text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
    keep = text_keep_mask(text_embeds.shape[0], cond_drop_prob, generator=generator, device=text_embeds.device)
    text_mask = text_mask.bool() & keep[:, None]
    return text_mask, text_mask.any(dim=-1)


def masked_token_loss(
    model: nn.Module,
    ids: Tensor,
    text_embeds: Tensor | None,
    text_mask: Tensor | None,
    *,
    grid_shape: GridShape | None = None,
    cond_drop_prob: float = 0.1,
    generator: torch.Generator | None = None,
    levels: int = 18,
    schedule: MaskSchedule = "discrete",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy on the masked positions of one randomly masked copy of ``ids`` (b, t, h, w) or (b, n).

    Metrics (detached scalars): ``masked_accuracy`` (argmax == target over masked positions, pooled),
    ``mask_fraction`` (masked / all tokens), ``text_kept`` (fraction of samples that kept their text).
    """
    core = unwrap(model)
    flat, grid = _flat(core, ids, grid_shape)
    b, n = flat.shape
    mask = draw_token_mask(b, n, levels=levels, schedule=schedule, generator=generator, device=flat.device)
    masked_input = torch.where(mask, core.mask_id, flat)
    text_mask, has_text = _drop_text(text_embeds, text_mask, cond_drop_prob, generator)
    logits = model(masked_input, text_embeds, text_mask, grid_shape=grid)
    targets = flat[mask]
    masked_logits = logits[mask]
    loss = F.cross_entropy(masked_logits, targets)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "masked_accuracy": (masked_logits.argmax(dim=-1) == targets).float().mean(),
            "mask_fraction": mask.float().mean(),
            "text_kept": has_text.float().mean() if has_text.numel() else torch.zeros((), device=flat.device),
        }
    return loss, metrics


def token_critic_loss(
    critic: TokenCritic | nn.Module,
    maskgit: MaskGIT | nn.Module,
    ids: Tensor,
    text_embeds: Tensor | None,
    text_mask: Tensor | None,
    *,
    grid_shape: GridShape | None = None,
    cond_drop_prob: float = 0.1,
    generator: torch.Generator | None = None,
    levels: int = 18,
    schedule: MaskSchedule = "discrete",
    sample_temperature: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """BCE of the critic's "this token is wrong" logits on a MaskGIT-completed sequence (Token-Critic).

    The frozen ``maskgit`` fills a randomly masked copy (Gumbel sampling at ``sample_temperature``); the
    label is 1 where the critic's input differs from the ground truth. (The release's unused critic
    labelled ``ids != sampled`` at every position, including unmasked ones where the input was the
    ground truth; we label what the critic actually sees.)
    """
    core = unwrap(maskgit)
    flat, grid = _flat(core, ids, grid_shape)
    b, n = flat.shape
    mask = draw_token_mask(b, n, levels=levels, schedule=schedule, generator=generator, device=flat.device)
    with torch.no_grad():
        logits = maskgit(torch.where(mask, core.mask_id, flat), text_embeds, text_mask, grid_shape=grid)
        noise = gumbel_noise(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        sampled = (logits / max(sample_temperature, 1e-10) + noise).argmax(dim=-1)
    critic_input = torch.where(mask, sampled, flat)
    labels = (critic_input != flat).to(logits.dtype)
    critic_text_mask, _ = _drop_text(text_embeds, text_mask, cond_drop_prob, generator)
    scores = critic(critic_input, text_embeds, critic_text_mask, grid_shape=grid)
    loss = F.binary_cross_entropy_with_logits(scores, labels)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "accuracy": ((scores > 0).to(labels.dtype) == labels).float().mean(),
            "fake_fraction": labels.mean(),
        }
    return loss, metrics
