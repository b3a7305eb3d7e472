"""CT-ViT losses on tiny modules: terms as configured, adaptive weight and gradient penalty by definition,
and the generator / discriminator steps each leaving the other part untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generatect_kedro.losses import CTViTLoss, CTViTLossConfig, adaptive_weight, pick_slices, random_slice_index
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.discriminator import Discriminator, DiscriminatorConfig
from generatect_kedro.models.perceptual import VGG16Config, VGG16Perceptual
from generatect_kedro.pipelines.ctvit.task import CTViTTask, OptimizerSettings
from generatect_kedro.training import StepSchedule, Trainer, TrainerConfig

TINY = CTViTConfig(dim=32, codebook_size=32, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=1,
                   dim_head=8, heads=2)
TINY_D = DiscriminatorConfig(dim=2, image_size=16, attn_res_layers=(), max_dim=16)


def tiny_vgg() -> VGG16Perceptual:
    return VGG16Perceptual(VGG16Config(width=2, fc_dim=8, pool_size=1))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    ctvit = CTViT(TINY).train()
    discriminator = Discriminator(TINY_D)
    volume = torch.rand(2, 1, 5, 16, 16) * 2 - 1
    return ctvit, discriminator, volume


def config(**changes) -> CTViTLossConfig:
    base = dict(gan=True, discriminator_schedule=StepSchedule(every=1, start=0))
    return CTViTLossConfig(**{**base, **changes})


@pytest.mark.parametrize("perceptual,gan", [(False, False), (True, False), (False, True), (True, True)])
def test_terms_present_as_configured(setup, perceptual, gan):
    ctvit, discriminator, volume = setup
    loss_fn = CTViTLoss(config(gan=gan), tiny_vgg() if perceptual else None)
    out = ctvit(volume)
    loss, metrics = loss_fn.generator(volume, out.recon, out.commit_loss, step=0,
                                      last_layer=ctvit.to_pixels[0].weight,
                                      discriminator=discriminator if gan else None)
    assert {"recon_loss", "commit_loss"} <= set(metrics)
    assert ("perceptual_loss" in metrics) == perceptual
    assert ("gen_loss" in metrics) == gan and ("adaptive_weight" in metrics) == gan
    assert loss.requires_grad and torch.isfinite(loss)


def test_gan_term_waits_for_the_discriminator_schedule(setup):
    ctvit, discriminator, volume = setup
    loss_fn = CTViTLoss(config(discriminator_schedule=StepSchedule(every=3, start=5)))
    out = ctvit(volume)
    kwargs = dict(last_layer=ctvit.to_pixels[0].weight, discriminator=discriminator)
    _, before = loss_fn.generator(volume, out.recon, out.commit_loss, step=4, **kwargs)
    _, after = loss_fn.generator(volume, out.recon, out.commit_loss, step=5, **kwargs)
    assert "gen_loss" not in before and "gen_loss" in after
    assert not CTViTLossConfig(gan=True, gan_weight=0.0).gan_active(10)


@pytest.mark.parametrize("perceptual", [False, True])
def test_adaptive_weight_and_total_follow_their_definition(setup, perceptual):
    ctvit, discriminator, volume = setup
    loss_fn = CTViTLoss(config(gan_weight=0.5, perceptual_weight=2.0, commit_weight=3.0),
                        tiny_vgg() if perceptual else None)
    out = ctvit(volume)
    index = torch.tensor([1, 4])
    weight = ctvit.to_pixels[0].weight
    loss, metrics = loss_fn.generator(volume, out.recon, out.commit_loss, step=0, last_layer=weight,
                                      discriminator=discriminator, slice_index=index)

    real, fake = volume[torch.arange(2), :, index], out.recon[torch.arange(2), :, index]
    recon = F.mse_loss(out.recon, volume)
    gen = -discriminator(fake).mean()
    if perceptual:
        numerator = F.mse_loss(loss_fn.perceptual(fake), loss_fn.perceptual(real))
    else:
        numerator = recon
    g_num = torch.autograd.grad(numerator, weight, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, weight, retain_graph=True)[0]
    expected = (g_num.norm() / g_gen.norm()).clamp(max=1e4)
    torch.testing.assert_close(metrics["adaptive_weight"], expected, rtol=1e-5, atol=0)
    total = recon + 3.0 * out.commit_loss + 0.5 * expected * gen + (2.0 * numerator if perceptual else 0.0)
    torch.testing.assert_close(loss, total, rtol=1e-5, atol=1e-7)


def test_adaptive_weight_is_clamped_and_constant():
    w = torch.randn(4, 3, requires_grad=True)
    big = (w * 1e6).sum()
    small = (w * 1e-3).sum()
    value = adaptive_weight(big, small, w, max_weight=1e4)
    assert float(value) == 1e4 and not value.requires_grad


def test_gradient_penalty_and_hinge_follow_their_definition(setup):
    ctvit, discriminator, volume = setup
    loss_fn = CTViTLoss(config())
    recon = ctvit(volume).recon.detach()
    index = torch.tensor([0, 3])
    loss, metrics = loss_fn.discriminator(volume, recon, discriminator, slice_index=index)

    real = pick_slices(volume, index).clone().requires_grad_(True)
    real_logits = discriminator(real)
    fake_logits = discriminator(pick_slices(recon, index))
    (grads,) = torch.autograd.grad(real_logits.sum(), real)
    penalty = 10.0 * ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
    hinge = (F.relu(1 + fake_logits) + F.relu(1 - real_logits)).mean()
    torch.testing.assert_close(metrics["grad_penalty"], penalty.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(metrics["hinge_loss"], hinge.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.detach(), (hinge + penalty).detach(), rtol=1e-5, atol=1e-7)
    _, no_gp = CTViTLoss(config(grad_penalty_weight=0.0)).discriminator(volume, recon, discriminator,
                                                                        slice_index=index)
    assert "grad_penalty" not in no_gp


def test_slices_come_from_the_seeded_global_rng():
    torch.manual_seed(3)
    first = random_slice_index(8, 17)
    torch.manual_seed(3)
    assert torch.equal(first, random_slice_index(8, 17)) and int(first.max()) < 17


def test_discriminator_step_gives_the_generator_no_gradient(setup):
    ctvit, discriminator, volume = setup
    task = CTViTTask(ctvit, CTViTLoss(config()), OptimizerSettings(), discriminator=discriminator)
    cache: dict = {}
    task.loss("generator", volume, 0, cache)  # leaves the detached reconstruction
    ctvit.zero_grad(set_to_none=True)
    loss, _ = task.loss("discriminator", volume, 0, cache)
    loss.backward()
    assert all(p.grad is None for p in ctvit.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())


class SnapshotTask(CTViTTask):
    """Records both parts' weights after every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots: list[tuple[dict, dict]] = []

    def after_step(self, step):
        copy = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        self.snapshots.append((copy(self.ctvit), copy(self.discriminator)))


def test_trainer_steps_each_part_only_on_its_own_schedule(setup):
    ctvit, discriminator, volume = setup
    loss_fn = CTViTLoss(config(discriminator_schedule=StepSchedule(every=2, start=0)))
    task = SnapshotTask(ctvit, loss_fn, OptimizerSettings(lr=1e-3, discriminator_lr=1e-3),
                        discriminator=discriminator)
    before_d = {k: v.clone() for k, v in discriminator.state_dict().items()}
    trainer = Trainer(TrainerConfig(max_steps=2, batch_size=2, log_every=1, show_progress=False), name="t")
    result = trainer.fit(task, [v for v in volume])
    (g1, d1), (g2, d2) = task.snapshots
    changed = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert changed(before_d, d1)  # step 0: the discriminator stepped
    assert not changed(d1, d2)  # step 1: only the generator stepped, with the adversarial term on
    assert changed(g1, g2)
    assert "train/generator/gen_loss" in result.metrics and "train/discriminator/grad_penalty" in dict(
        result.history[0][1])
    assert all(p.requires_grad for p in discriminator.parameters())


def test_loss_config_from_params():
    cfg = CTViTLossConfig.from_params({"perceptual": {"weights_path": None, "weight": 0.5},
                                       "gan": {"enabled": False, "schedule": {"start": 100, "every": 2}}})
    assert cfg.perceptual_weight == 0.5 and not cfg.gan and not cfg.gan_active(1000)
    assert cfg.discriminator_schedule == StepSchedule(every=2, start=100)
    with pytest.raises(ValueError, match="unknown key"):
        CTViTLossConfig.from_params({"gan": {"schedule": {"begin": 3}}})
