"""The super-resolution training loss equals the release's (fixture ``train.*``) and behaves as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from generatect_kedro.diffusion import COSINE, LossDraws, draw_loss_randomness, superres_v_loss
from generatect_kedro.models.convert import convert_superres_state_dict
from generatect_kedro.models.unet import UNet, UNetConfig


@pytest.fixture(scope="module")
def unet_and_io(fixtures_dir: Path):
    meta = json.loads((fixtures_dir / "superres_unet.json").read_text())
    config = UNetConfig.from_release_superres_config(yaml.safe_load(meta["yaml_used"]))
    unet = UNet(config)
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    unet.load_state_dict(convert_superres_state_dict(weights, config, prefix=""))
    return unet.train(), load_file(fixtures_dir / "superres_unet_io.safetensors")


def fixture_loss(unet, io, **kwargs):
    return superres_v_loss(unet, io["train.images"] * 2 - 1, io["train.input_lowres"] * 2 - 1,
                           io["input.text_embeds"], io["input.text_mask"], **kwargs)


@pytest.mark.fixtures
def test_loss_with_recorded_draws_matches_release(unet_and_io):
    unet, io = unet_and_io
    draws = LossDraws(times=io["train.times"], lowres_aug_times=io["train.lowres_aug_time"].expand(2),
                      noise=io["train.noise"], lowres_noise=io["train.lowres_noise"],
                      text_keep_mask=io["train.text_keep_mask"])
    out = fixture_loss(unet, io, draws=draws)
    # observed: |Δloss| 6e-8 (loss 0.7920), max |Δ unet_out| 2.4e-6
    torch.testing.assert_close(out.pred, io["train.unet_out"], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss.reshape(1), io["train.loss"], atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in unet.parameters())  # every parameter is trained
    unet.zero_grad()


@pytest.mark.fixtures
def test_seed_alone_reproduces_the_release_draws(unet_and_io):
    """A generator seeded 10 draws t, a, ε, ε_lowres and the keep mask exactly as the release after manual_seed(10)."""
    unet, io = unet_and_io
    with torch.no_grad():
        out = fixture_loss(unet, io, generator=torch.Generator().manual_seed(10))
    assert torch.equal(out.draws.times, io["train.times"])
    assert torch.equal(out.draws.lowres_aug_times, io["train.lowres_aug_time"].expand(2))
    assert torch.equal(out.draws.noise, io["train.noise"])
    assert torch.equal(out.draws.lowres_noise, io["train.lowres_noise"])
    assert torch.equal(out.draws.text_keep_mask, io["train.text_keep_mask"])  # [True, False]: null path exercised
    torch.testing.assert_close(out.loss.reshape(1), io["train.loss"], atol=1e-5, rtol=1e-5)


def test_loss_formula_and_draw_options():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, text_embed_dim=12, cond_dim=16,
                           attn_heads=2, attn_dim_head=8, mid_attn_heads=2, mid_attn_dim_head=8, max_text_len=8,
                           attn_pool_num_latents=4, attn_pool_max_seq_len=16, resnet_groups=4))
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    lowres = torch.rand(3, 1, 8, 8) * 2 - 1
    text = torch.randn(3, 5, 12)
    out = superres_v_loss(unet, images, lowres, text, generator=torch.Generator().manual_seed(1))
    log_snr = COSINE.log_snr(out.draws.times)
    manual = ((out.pred - out.target) ** 2).flatten(1).mean(1) * (1 + log_snr.exp()) ** -0.5
    torch.testing.assert_close(out.loss, manual.mean())
    torch.testing.assert_close(out.target, COSINE.v_target(images, out.draws.times, out.draws.noise))
    unweighted = superres_v_loss(unet, images, lowres, text, draws=out.draws, p2_loss_weight_gamma=0.0)
    torch.testing.assert_close(unweighted.per_sample, ((out.pred - out.target) ** 2).flatten(1).mean(1))

    shared = draw_loss_randomness(images, generator=torch.Generator().manual_seed(2))
    assert shared.lowres_aug_times.unique().numel() == 1  # one augmentation level for the batch (release)
    per_sample = draw_loss_randomness(images, per_sample_aug_level=True, generator=torch.Generator().manual_seed(2))
    assert per_sample.lowres_aug_times.unique().numel() == 3
    assert draw_loss_randomness(images, cond_drop_prob=0.0).text_keep_mask.all()
    assert not draw_loss_randomness(images, cond_drop_prob=1.0).text_keep_mask.any()
