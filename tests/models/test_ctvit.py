"""CT-ViT behaviour: variable slice counts, the causal-depth switch, the quirk switch, config checks."""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.models.ctvit import CTViT, CTViTConfig

TINY = dict(
    dim=32, codebook_size=16, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=2, dim_head=8, heads=2
)


def tiny(**overrides) -> CTViT:
    torch.manual_seed(0)
    return CTViT(CTViTConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_any_one_plus_2k_slices_round_trips(k):
    model = tiny()
    slices = 1 + 2 * k
    volume = torch.rand(2, 1, slices, 16, 16) * 2 - 1
    with torch.no_grad():
        assert model.config.token_grid(slices) == (1 + k, 2, 2)
        assert model.encode(volume).shape == (2, 1 + k, 2, 2, 32)
        ids = model.tokenize(volume)
        assert ids.shape == (2, 1 + k, 2, 2) and ids.dtype == torch.int64
        recon = model.decode_from_ids(ids)
        assert recon.shape == volume.shape
        torch.testing.assert_close(model.decode_from_ids(ids.flatten(1)), recon)
        torch.testing.assert_close(model.decode_from_ids(ids.flatten(1), grid_shape=(1 + k, 2, 2)), recon)
        out = model(volume)
        assert out.recon.shape == volume.shape and out.pre_quant.shape == out.quantized.shape
        torch.testing.assert_close(out.recon, recon)


def test_single_slice_4d_input():
    model = tiny()
    out = model(torch.randn(3, 1, 16, 16))
    assert out.recon.shape == (3, 1, 16, 16) and out.ids.shape == (3, 1, 2, 2)


@pytest.mark.parametrize("slices", [2, 4])
def test_rejects_slice_counts_not_1_plus_2k(slices):
    with pytest.raises(ValueError, match="1 \\+ 2"):
        tiny().encode(torch.randn(1, 1, slices, 16, 16))


def test_rejects_wrong_image_size_and_bad_token_counts():
    model = tiny()
    with pytest.raises(ValueError):
        model.encode(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ValueError):
        model.decode_from_ids(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError):
        model.decode_from_ids(torch.zeros(1, 8, dtype=torch.long), grid_shape=(4, 1, 2))


def slice_groups_after(volume: torch.Tensor, g: int) -> torch.Tensor:
    """Perturb every slice of token groups > g (group 0 = slice 0, group i = slices 2i−1, 2i)."""
    out = volume.clone()
    out[:, :, 2 * g + 1 :] += torch.randn_like(out[:, :, 2 * g + 1 :])
    return out


@pytest.mark.parametrize("g", [0, 1, 3])
def test_causal_depth_stops_information_from_later_slices(g):
    torch.manual_seed(1)
    volume = torch.rand(2, 1, 11, 16, 16) * 2 - 1
    changed = slice_groups_after(volume, g)
    causal, acausal = tiny(causal_depth=True, reference_quirks=False), tiny(reference_quirks=False)
    with torch.no_grad():
        a, b = causal.encode(volume), causal.encode(changed)
        torch.testing.assert_close(a[:, : g + 1], b[:, : g + 1], atol=1e-6, rtol=0)
        assert (a[:, g + 1 :] - b[:, g + 1 :]).abs().max() > 1e-3
        # decoder: later token groups do not change earlier slices either
        ids = causal.tokenize(volume)
        ids_changed = ids.clone()
        ids_changed[:, g + 1 :] = (ids_changed[:, g + 1 :] + 1) % 16
        ra, rb = causal.decode_from_ids(ids), causal.decode_from_ids(ids_changed)
        torch.testing.assert_close(ra[:, :, : 2 * g + 1], rb[:, :, : 2 * g + 1], atol=1e-6, rtol=0)
        # without the switch (the release's behaviour) earlier groups do see later slices
        c, d = acausal.encode(volume), acausal.encode(changed)
        assert (c[:, : g + 1] - d[:, : g + 1]).abs().max() > 1e-3


def test_causal_depth_requires_quirks_off():
    with pytest.raises(ValueError, match="reference_quirks=False"):
        CTViTConfig(causal_depth=True)


def test_reference_quirks_off_is_a_different_function_with_the_same_parameters():
    quirky, fixed = tiny(), tiny(reference_quirks=False)
    fixed.load_state_dict(quirky.state_dict())
    volume = torch.rand(2, 1, 7, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = quirky.encode(volume), fixed.encode(volume)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-2


def test_tokenize_never_updates_codebook_and_training_forward_does():
    model = tiny().train()
    before = model.vq.embed.clone()
    volume = torch.rand(1, 1, 3, 16, 16)
    model.tokenize(volume)
    assert torch.equal(model.vq.embed, before)
    out = model(volume)
    assert not torch.equal(model.vq.embed, before)
    (out.recon_loss + out.commit_loss).backward()
    assert model.to_patch_emb[2].weight.grad is not None


def test_config_helpers():
    config = CTViTConfig.from_reference_kwargs(dict(TINY, use_vgg_and_gan=False, discr_base_dim=16))
    assert config.token_grid(201 if config.image_size else 1)[0] == 101
    assert config.num_slices(101) == 201
    assert CTViTConfig().grid_hw == (8, 8) and CTViTConfig().token_grid(201) == (101, 8, 8)
    with pytest.raises(ValueError):
        CTViTConfig(image_size=100, patch_size=16)
