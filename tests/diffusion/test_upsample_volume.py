"""Volume upsampling: batching does not change a seeded result, cascades compose, guidance is one batched pass."""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.diffusion import Cascade, CascadeStage, GuidedDenoiser, slice_seeds_for, upsample_volume
from generatect_kedro.models.unet import UNet, UNetConfig

TINY = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, text_embed_dim=12, cond_dim=16, attn_heads=2,
            attn_dim_head=8, mid_attn_heads=2, mid_attn_dim_head=8, max_text_len=8, attn_pool_num_latents=4,
            attn_pool_max_seq_len=16, resnet_groups=4)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(**TINY))
    with torch.no_grad():
        unet.final_conv.weight.normal_(std=0.1)  # zero-initialised in a fresh model
    return unet.eval()


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(5, 8, 8, generator=gen) * 2 - 1
    text = torch.randn(1, 6, 12, generator=gen)
    text[:, 4:] = 0  # padding rows: the derived mask drops them
    return tiny_unet(), volume, text


@pytest.mark.parametrize("sampler", ["ancestral", "dpm++2m"])
def test_slice_batch_size_does_not_change_the_result(case, sampler):
    unet, volume, text = case
    runs = {
        bs: upsample_volume(unet, volume, text, scale=2, sampler=sampler, steps=3, slice_batch_size=bs,
                            generator=torch.Generator().manual_seed(42))
        for bs in (1, 2, 5)
    }
    assert runs[1].shape == (5, 16, 16) and runs[1].abs().max() <= 1
    for bs in (2, 5):  # same per-slice streams; only float summation order of batched convs may differ
        torch.testing.assert_close(runs[bs], runs[1], atol=1e-5, rtol=0)
    # sharded over two "ranks" with the volume's seeds: the same volume
    seeds = slice_seeds_for(5, torch.Generator().manual_seed(42))
    shards = [upsample_volume(unet, volume[a:b], text, scale=2, sampler=sampler, steps=3, slice_seeds=seeds[a:b])
              for a, b in ((0, 3), (3, 5))]
    torch.testing.assert_close(torch.cat(shards), runs[1], atol=1e-5, rtol=0)


def test_seed_controls_the_result(case):
    unet, volume, text = case
    a = upsample_volume(unet, volume, text[0], scale=2, steps=2, generator=torch.Generator().manual_seed(1))
    b = upsample_volume(unet, volume, text, text_mask=(text != 0).any(-1), scale=2, steps=2,
                        generator=torch.Generator().manual_seed(1))
    c = upsample_volume(unet, volume, text, scale=2, steps=2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # (n, e) text, derived mask == explicit release mask
    assert (a - c).abs().max() > 1e-3
    torch.manual_seed(7)
    d = upsample_volume(unet, volume, text, scale=2, steps=2)
    torch.manual_seed(7)
    torch.testing.assert_close(upsample_volume(unet, volume, text, scale=2, steps=2), d)  # global RNG works too


def test_two_stage_cascade_returns_a_volume(case):
    unet, volume, text = case
    cascade = Cascade([
        CascadeStage(unet, scale=2, steps=2),
        CascadeStage(tiny_unet(seed=1), scale=2, steps=2, sampler="dpm++2m", lowres_noise_level=0.2),
    ])
    assert cascade.scale == 4 and len(list(cascade.unets)) == 2
    out = cascade(volume, text, slice_batch_size=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 32, 32) and torch.isfinite(out).all() and out.abs().max() <= 1
    again = cascade(volume, text, slice_batch_size=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out, atol=1e-5, rtol=0)


def test_guidance_is_one_batched_pass_equal_to_two(case):
    unet, _, text = case
    gen = torch.Generator().manual_seed(3)
    x, lowres = torch.randn(2, 1, 16, 16, generator=gen), torch.randn(2, 1, 16, 16, generator=gen)
    kwargs = dict(lowres_cond_img=lowres, lowres_noise_log_snr=torch.full((2,), 2.25),
                  text_embeds=text.expand(2, -1, -1), text_mask=(text != 0).any(-1).expand(2, -1))
    log_snr = torch.tensor([0.5, -1.0])
    with torch.no_grad():
        cond = unet(x, log_snr, **kwargs)
        null = unet(x, log_snr, cond_drop_prob=1.0, **kwargs)
        batched = GuidedDenoiser(unet, cond_scale=3.0, **kwargs)(x, log_snr)
        sequential = GuidedDenoiser(unet, cond_scale=3.0, batched=False, **kwargs)(x, log_snr)
        plain = GuidedDenoiser(unet, cond_scale=1.0, **kwargs)(x, log_snr)
    torch.testing.assert_close(batched, null + 3.0 * (cond - null), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sequential, batched, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain, cond, atol=0, rtol=0)


def test_input_checks(case):
    unet, volume, text = case
    with pytest.raises(ValueError, match="volume"):
        upsample_volume(unet, volume[0], text, scale=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        upsample_volume(unet, volume, text, scale=2, sampler="euler")
    with pytest.raises(ValueError, match="guidance needs text"):
        GuidedDenoiser(unet, lowres_cond_img=None, lowres_noise_log_snr=None, cond_scale=2.0)
