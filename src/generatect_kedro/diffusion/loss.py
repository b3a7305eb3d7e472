"""The super-resolution training loss, as released: v-objective, p2-weighted MSE, noise-augmented low-res input.

Per batch: t ~ U(0, 1) per sample on the cosine schedule; x_t = α·x₀ + σ·ε; the low-res slice is resized to
the target size (nearest, clamped to [−1, 1]) and noised on the *linear* schedule at one augmentation time
a ~ U(0, 1) shared by the batch (``per_sample_aug_level=False``, the release's choice; at sampling it is
fixed, 0.1); the prompt is dropped per sample with ``cond_drop_prob`` (0.1 in the release, which makes
classifier-free guidance possible). The U-Net gets λ(t) and λ_linear(a), and

    loss = mean_b[ mean_pixels((v̂ − (α·ε − σ·x₀))²) · (k + e^λ(t))^−γ ],   k = 1, γ = 0.5 (p2 weighting).

All randomness comes from one optional ``generator`` in the release's order (t, a, ε, ε_lowres, keep
mask), so a seeded generator reproduces the release's ``torch.manual_seed`` run; or pass ``draws``.
Images are in the model range [−1, 1] (the release maps [0, 1] inputs with x·2 − 1 first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.diffusion.schedule import COSINE, LINEAR, NoiseSchedule

__all__ = ["LossDraws", "SuperresLossOutput", "draw_loss_randomness", "superres_v_loss", "resize_lowres"]


@dataclass
class LossDraws:
    times: Tensor  # (b,) diffusion times
    lowres_aug_times: Tensor  # (b,) augmentation times (equal across the batch unless per-sample)
    noise: Tensor  # like the images
    lowres_noise: Tensor  # like the images
    text_keep_mask: Tensor  # (b,) bool


@dataclass
class SuperresLossOutput:
    loss: Tensor  # scalar
    per_sample: Tensor  # (b,) weighted per-sample losses
    pred: Tensor  # v̂
    target: Tensor  # v
    draws: LossDraws


def resize_lowres(lowres: Tensor, size: tuple[int, int], mode: str = "nearest", clamp: bool = True) -> Tensor:
    """Low-res slices → target size (the release: nearest, clamped to the image range when training)."""
    if tuple(lowres.shape[-2:]) != tuple(size):
        lowres = F.interpolate(lowres, size=size, mode=mode)
    return lowres.clamp(-1.0, 1.0) if clamp else lowres


def draw_loss_randomness(
    images: Tensor,
    *,
    cond_drop_prob: float = 0.1,
    per_sample_aug_level: bool = False,
    generator: torch.Generator | None = None,
) -> LossDraws:
    """All random inputs of one loss evaluation, drawn in the release's order."""
    b, device = images.shape[0], images.device
    draw_device = generator.device if generator is not None else device

    def uniform(n: int) -> Tensor:
        return torch.rand(n, generator=generator, device=draw_device).to(device)

    def gaussian() -> Tensor:
        return torch.randn(images.shape, generator=generator, device=draw_device, dtype=images.dtype).to(device)

    times = uniform(b)
    aug = uniform(b) if per_sample_aug_level else uniform(1).expand(b)
    noise, lowres_noise = gaussian(), gaussian()
    if cond_drop_prob <= 0:
        keep = torch.ones(b, dtype=torch.bool, device=device)
    elif cond_drop_prob >= 1:
        keep = torch.zeros(b, dtype=torch.bool, device=device)
    else:
        keep = uniform(b) < 1 - cond_drop_prob
    return LossDraws(times, aug, noise, lowres_noise, keep)


def superres_v_loss(
    unet: nn.Module,
    images: Tensor,
    lowres_images: Tensor,
    text_embeds: Tensor | None = None,
    text_mask: Tensor | None = None,
    *,
    cond_drop_prob: float = 0.1,
    p2_loss_weight_gamma: float = 0.5,
    p2_loss_weight_k: float = 1.0,
    schedule: NoiseSchedule = COSINE,
    lowres_schedule: NoiseSchedule = LINEAR,
    per_sample_aug_level: bool = False,
    resize_mode: str = "nearest",
    generator: torch.Generator | None = None,
    draws: LossDraws | None = None,
) -> SuperresLossOutput:
    """images (b, c, H, W) and lowres_images (b, c, h, w) in [−1, 1]; text_embeds (b, n, e), mask (b, n).

    A missing ``text_mask`` is derived as "token embedding not all zero", as the release does.
    """
    if draws is None:
        draws = draw_loss_randomness(
            images, cond_drop_prob=cond_drop_prob, per_sample_aug_level=per_sample_aug_level, generator=generator
        )
    if text_embeds is not None and text_mask is None:
        text_mask = (text_embeds != 0).any(dim=-1)
    lowres = resize_lowres(lowres_images, tuple(images.shape[-2:]), mode=resize_mode, clamp=True)
    lowres_noisy = lowres_schedule.q_sample(lowres, draws.lowres_aug_times, draws.lowres_noise)
    x_noisy = schedule.q_sample(images, draws.times, draws.noise)
    log_snr = schedule.log_snr(draws.times).to(images.dtype)
    pred = unet(
        x_noisy,
        log_snr,
        lowres_cond_img=lowres_noisy,
        lowres_noise_log_snr=lowres_schedule.log_snr(draws.lowres_aug_times).to(images.dtype),
        text_embeds=text_embeds,
        text_mask=text_mask,
        text_keep_mask=draws.text_keep_mask,
    )
    target = schedule.v_target(images, draws.times, draws.noise)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    if p2_loss_weight_gamma > 0:
        per_sample = per_sample * (p2_loss_weight_k + log_snr.float().exp()) ** -p2_loss_weight_gamma
    return SuperresLossOutput(per_sample.mean(), per_sample, pred, target, draws)
