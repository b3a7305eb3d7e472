"""The CT-ViT training losses: reconstruction + commitment + perceptual + adaptive hinge GAN.

Generator (the CT-ViT), as the released ``CTViT.forward``:

    L_G = w_rec·MSE(x, x̂) + w_commit·commit + w_perc·MSE(φ(x_s), φ(x̂_s)) + w_gan·λ·(−mean D(x̂_s))

where ``x_s`` is one random axial slice per volume (drawn from torch's global RNG, which the shared trainer
seeds and checkpoints, so a resumed run draws the same slices), φ the frozen VGG16 fc7 network and
λ = ‖∇_W L_perc‖ / ‖∇_W L_gen‖ (clamped at 1e4, no gradient) with W the CT-ViT's last decoder projection
(``to_pixels[0].weight``). When the perceptual term is off, ‖∇_W L_rec‖ takes its place in the numerator,
as in VQGAN. The adversarial term only counts from the discriminator's first scheduled step on.

Discriminator (2-D, on slices): hinge(D(x̂_s), D(x_s)) + γ·mean_b(‖∇_{x_s} D(x_s)‖₂ − 1)², γ = 10, on a
freshly drawn slice of the detached reconstruction the generator left in the trainer's cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.models.discriminator import gradient_penalty, hinge_discr_loss, hinge_gen_loss
from generatect_kedro.training import StepSchedule

__all__ = ["CTViTLoss", "CTViTLossConfig", "adaptive_weight", "pick_slices", "random_slice_index"]


@dataclass(frozen=True)
class CTViTLossConfig:
    """Loss weights and the GAN schedule; defaults are the release's (every term weighted 1, GP 10)."""

    recon_weight: float = 1.0
    commit_weight: float = 1.0
    perceptual_weight: float = 1.0  # used only when a perceptual network is given
    gan: bool = True
    gan_weight: float = 1.0  # multiplies the adaptive weight λ (the release: 1)
    adaptive_weight_max: float = 1.0e4
    grad_penalty_weight: float = 10.0
    discriminator_schedule: StepSchedule = field(default_factory=lambda: StepSchedule(every=3, start=0))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CTViTLossConfig:
        """From ``ctvit.loss``: recon_weight, commit_weight, perceptual{weight}, gan{enabled, weight, …}."""
        perceptual = dict(params.get("perceptual") or {})
        gan = dict(params.get("gan") or {})
        return cls(
            recon_weight=float(params.get("recon_weight", 1.0)),
            commit_weight=float(params.get("commit_weight", 1.0)),
            perceptual_weight=float(perceptual.get("weight", 1.0)),
            gan=bool(gan.get("enabled", True)),
            gan_weight=float(gan.get("weight", 1.0)),
            adaptive_weight_max=float(gan.get("adaptive_weight_max", 1.0e4)),
            grad_penalty_weight=float(gan.get("grad_penalty_weight", 10.0)),
            discriminator_schedule=StepSchedule.from_params(gan.get("schedule") or {"every": 3, "start": 0}),
        )

    def gan_active(self, step: int) -> bool:
        """The generator's adversarial term counts from the discriminator's first scheduled step on."""
        return self.gan and self.gan_weight > 0 and step >= self.discriminator_schedule.start


def random_slice_index(batch: int, slices: int, device: torch.device | str = "cpu") -> Tensor:
    """One uniformly random slice index per volume, from torch's global (trainer-seeded) RNG."""
    return torch.randint(0, slices, (batch,)).to(device)


def pick_slices(volume: Tensor, index: Tensor) -> Tensor:
    """(b, c, slices, H, W) and (b,) slice indices → (b, c, H, W)."""
    return volume[torch.arange(volume.shape[0], device=volume.device), :, index.to(volume.device)]


def adaptive_weight(numerator_loss: Tensor, gen_loss: Tensor, layer_weight: Tensor,
                    max_weight: float = 1.0e4, eps: float = 1e-8) -> Tensor:
    """‖∇_W numerator‖₂ / ‖∇_W gen‖₂, clamped to ``max_weight``; a constant (no gradient flows through it)."""
    (num_grad,) = torch.autograd.grad(numerator_loss, layer_weight, retain_graph=True)
    (gen_grad,) = torch.autograd.grad(gen_loss, layer_weight, retain_graph=True)
    weight = num_grad.detach().float().norm(p=2) / gen_grad.detach().float().norm(p=2).clamp_min(eps)
    return weight.clamp(max=max_weight)


class CTViTLoss:
    """Computes both parts' losses; holds the frozen perceptual network (or None: term disabled).

    Not an ``nn.Module`` on purpose: the perceptual network is neither a trainable part nor part of the
    CT-ViT's weights. It follows the volumes' device on first use.
    """

    def __init__(self, config: CTViTLossConfig, perceptual: nn.Module | None = None) -> None:
        self.config = config
        self.perceptual = perceptual
        if perceptual is not None:
            perceptual.requires_grad_(False)
            perceptual.eval()

    @property
    def uses_perceptual(self) -> bool:
        return self.perceptual is not None and self.config.perceptual_weight > 0

    def _perceptual_on(self, device: torch.device) -> nn.Module:
        assert self.perceptual is not None
        param = next(self.perceptual.parameters(), None)
        if param is not None and param.device != device:
            self.perceptual.to(device)
        return self.perceptual

    def perceptual_loss(self, real_slices: Tensor, fake_slices: Tensor) -> Tensor:
        net = self._perceptual_on(fake_slices.device)
        with torch.no_grad():
            real_features = net(real_slices)
        return F.mse_loss(net(fake_slices).float(), real_features.float())

    def generator(self, volume: Tensor, recon: Tensor, commit_loss: Tensor, *, step: int,
                  last_layer: Tensor | None = None, discriminator: Callable[[Tensor], Tensor] | None = None,
                  slice_index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The CT-ViT's loss on (b, c, slices, H, W) volumes and their reconstructions."""
        c = self.config
        recon_loss = F.mse_loss(recon.float(), volume.float())
        loss = c.recon_weight * recon_loss + c.commit_weight * commit_loss
        metrics: dict[str, Tensor] = {"recon_loss": recon_loss.detach(), "commit_loss": commit_loss.detach()}
        use_gan = discriminator is not None and c.gan_active(step)
        if not (self.uses_perceptual or use_gan):
            return loss, metrics

        if slice_index is None:
            slice_index = random_slice_index(volume.shape[0], volume.shape[2], volume.device)
        real_slices, fake_slices = pick_slices(volume, slice_index), pick_slices(recon, slice_index)
        numerator = recon_loss
        if self.uses_perceptual:
            perceptual = self.perceptual_loss(real_slices, fake_slices)
            loss = loss + c.perceptual_weight * perceptual
            metrics["perceptual_loss"] = perceptual.detach()
            numerator = perceptual
        if use_gan:
            if last_layer is None:
                raise ValueError("the adaptive GAN weight needs the CT-ViT's last decoder layer weight")
            gen_loss = hinge_gen_loss(discriminator(fake_slices))
            weight = adaptive_weight(numerator, gen_loss, last_layer, c.adaptive_weight_max)
            loss = loss + c.gan_weight * weight * gen_loss
            metrics.update(gen_loss=gen_loss.detach(), adaptive_weight=weight.detach())
        return loss, metrics

    def discriminator(self, volume: Tensor, recon: Tensor, discriminator: Callable[[Tensor], Tensor], *,
                      slice_index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss on real vs (detached) reconstructed slices + gradient penalty on the real ones."""
        if slice_index is None:
            slice_index = random_slice_index(volume.shape[0], volume.shape[2], volume.device)
        real = pick_slices(volume, slice_index).detach().float().requires_grad_(True)
        fake = pick_slices(recon, slice_index).detach().float()
        real_logits, fake_logits = discriminator(real), discriminator(fake)
        hinge = hinge_discr_loss(fake_logits, real_logits)
        metrics = {"hinge_loss": hinge.detach(), "real_logit": real_logits.detach().mean(),
                   "fake_logit": fake_logits.detach().mean()}
        loss = hinge
        if self.config.grad_penalty_weight > 0:
            penalty = gradient_penalty(real, real_logits, self.config.grad_penalty_weight)
            loss = loss + penalty
            metrics["grad_penalty"] = penalty.detach()
        return loss, metrics
