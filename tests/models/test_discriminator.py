"""CT-ViT discriminator and GAN losses equal the release on the fixture (README §1b)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.models.convert import convert_discriminator_state_dict
from generatect_kedro.models.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    gradient_penalty,
    hinge_discr_loss,
    hinge_gen_loss,
)


@pytest.mark.fixtures
def test_discriminator_fixture(fixtures_dir: Path):
    meta = json.loads((fixtures_dir / "ctvit_discriminator.json").read_text())
    config = DiscriminatorConfig(**meta["constructor_kwargs"])  # attn_res_layers arrives as a JSON list
    model = Discriminator(config)
    model.load_state_dict(
        convert_discriminator_state_dict(load_file(fixtures_dir / "ctvit_discriminator_weights.safetensors"), config)
    )
    model.eval()
    io = load_file(fixtures_dir / "ctvit_discriminator_io.safetensors")
    fake = model(io["input.fake"])
    real_images = io["input.real"].clone().requires_grad_()
    real = model(real_images)
    got = {
        "out.logits_fake": fake,
        "out.logits_real": real,
        "out.hinge_discr_loss": hinge_discr_loss(fake, real),
        "out.hinge_gen_loss": hinge_gen_loss(fake),
        "out.gradient_penalty": gradient_penalty(real_images, real),
    }
    assert set(got) == {k for k in io if k.startswith("out.")}
    for name, value in got.items():
        torch.testing.assert_close(value.reshape(io[name].shape), io[name], atol=1e-5, rtol=1e-4)


def test_release_shapes_and_size():
    """The discriminator inside the released CT-ViT: 6 blocks, attention after block 3, 20.68 M parameters."""
    model = Discriminator(DiscriminatorConfig())
    assert [a is not None for a in model.attn_blocks] == [False, False, False, True, False, False]
    assert model.to_logits[3].weight.shape == (1, 8192)
    # the release also counts a 512-element context_norm gain that self-attention never uses
    assert round((sum(p.numel() for p in model.parameters()) + 512) / 1e6, 2) == 20.68
    assert model(torch.randn(2, 1, 128, 128)).shape == (2,)


def test_gradient_penalty_keeps_graph():
    model = Discriminator(DiscriminatorConfig(dim=2, image_size=16, attn_res_layers=(8,)))
    images = torch.randn(2, 1, 16, 16, requires_grad=True)
    gp = gradient_penalty(images, model(images))
    gp.backward()
    assert all(p.grad is not None for p in model.blocks[0].parameters())
