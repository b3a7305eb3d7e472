"""Super-resolution U-Net behaviour over configs: shapes, text paths, dropout, checkpointing, config checks."""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.models.unet import UNet, UNetConfig

TINY = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, text_embed_dim=12, cond_dim=16, attn_heads=2,
            attn_dim_head=8, mid_attn_heads=2, mid_attn_dim_head=8, max_text_len=8, attn_pool_num_latents=4,
            attn_pool_max_seq_len=16, resnet_groups=4)


def tiny(**overrides) -> UNet:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**{**TINY, **overrides}))
    with torch.no_grad():  # the release zero-inits the last conv: make outputs depend on the input in tests
        unet.final_conv.weight.normal_(std=0.1)
    return unet.eval()


def inputs(unet: UNet, b: int, size: int | tuple[int, int], *, text: bool = True, n_tokens: int = 5) -> dict:
    h, w = (size, size) if isinstance(size, int) else size
    c = unet.config.channels
    gen = torch.Generator().manual_seed(1)
    out = dict(x=torch.randn(b, c, h, w, generator=gen), log_snr=torch.linspace(-5, 5, b))
    if unet.config.lowres_cond:
        out.update(lowres_cond_img=torch.randn(b, c, h, w, generator=gen), lowres_noise_log_snr=torch.full((b,), 2.25))
    if text:
        out["text_embeds"] = torch.randn(b, n_tokens, unet.config.text_embed_dim, generator=gen)
        out["text_mask"] = torch.arange(n_tokens).expand(b, -1) < 3
    return out


def call(unet: UNet, b: int, size: int | tuple[int, int], *, text: bool = True, n_tokens: int = 5, **kwargs):
    args = inputs(unet, b, size, text=text, n_tokens=n_tokens)
    return unet(args.pop("x"), args.pop("log_snr"), **args, **kwargs)


@pytest.mark.parametrize(
    ("overrides", "size"),
    [
        ({}, 16),
        ({"dim_mults": (1, 2, 4)}, 32),
        ({"dim_mults": (1, 2, 4), "layer_cross_attns": (False, False, True)}, (16, 24)),
        ({"layer_cross_attns": False}, 8),
        ({"num_resnet_blocks": (0, 2)}, 16),
        ({"channels": 2, "dim": 16}, 16),
        ({"lowres_cond": False}, 16),
        ({"cond_on_text": False}, 16),
        ({"attn_pool_text": False}, 16),
        ({"scale_skip_connection": False, "use_global_context_attn": False, "num_time_tokens": 3}, 16),
    ],
)
def test_output_shape_over_configs(overrides, size):
    unet = tiny(**overrides)
    text = unet.config.cond_on_text
    with torch.no_grad():
        out = call(unet, 3, size, text=text)
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, unet.config.channels, h, w)
    assert torch.isfinite(out).all()


def test_cross_attention_flags_place_blocks():
    unet = tiny(dim_mults=(1, 2, 4), layer_cross_attns=(False, True, False))
    assert [lvl.first_block.cross_attn is not None for lvl in unet.downs] == [False, True, False]
    assert [lvl.first_block.cross_attn is not None for lvl in unet.ups] == [False, True, False]  # mirrored
    assert unet.mid_block1.cross_attn is not None and unet.mid_block2.cross_attn is not None
    assert all(b.cross_attn is None for lvl in unet.downs for b in lvl.blocks)


def test_samples_in_a_batch_are_independent():
    unet = tiny()
    args = inputs(unet, 3, 16)
    with torch.no_grad():
        batched = unet(args.pop("x"), args.pop("log_snr"), **args)
        args = inputs(unet, 3, 16)
        single = [unet(**{k: v[i : i + 1] for k, v in args.items()}) for i in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=1e-4)


def test_text_changes_the_output_and_dropout_uses_the_generator():
    unet = tiny()
    with torch.no_grad():
        cond = call(unet, 4, 16)
        null = call(unet, 4, 16, cond_drop_prob=1.0)
        assert (cond - null).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        drop_a = call(unet, 4, 16, cond_drop_prob=0.5, generator=gen_a)
        drop_b = call(unet, 4, 16, cond_drop_prob=0.5, generator=gen_b)
    torch.testing.assert_close(drop_a, drop_b)
    keep = torch.rand(4, generator=torch.Generator().manual_seed(3)) < 0.5
    expected = torch.where(keep.reshape(-1, 1, 1, 1), cond, null)
    torch.testing.assert_close(drop_a, expected, atol=1e-5, rtol=1e-4)


def test_text_longer_than_max_len_is_truncated():
    unet = tiny()
    with torch.no_grad():
        long = call(unet, 2, 16, n_tokens=12)
    assert long.shape == (2, 1, 16, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    unet = tiny().train()
    grads = []
    for checkpointing in (False, True):
        unet.gradient_checkpointing = checkpointing
        unet.zero_grad()
        call(unet, 2, 16).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4)


def test_paper_config_size_on_meta_device():
    with torch.device("meta"):
        unet = UNet()
    assert sum(p.numel() for p in unet.parameters()) == 22_190_440  # release: 22,190,441 incl. the NullUnet's 1
    assert unet.config.time_cond_dim == 512 and unet.config.context_dim == 64


def test_config_validation():
    with pytest.raises(ValueError, match="entries for 3 levels"):
        UNetConfig(layer_cross_attns=(False, False, False, True))  # the release YAML as a plain list
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(dim=12)
    with pytest.raises(ValueError, match="multiple of"):
        call(tiny(), 1, 10)
    with pytest.raises(ValueError, match="lowres"):
        tiny()(torch.zeros(1, 1, 16, 16), torch.zeros(1))


def test_from_reference_kwargs_quirk_and_unsupported_options():
    yaml_unet = dict(dim=64, num_resnet_blocks=2, dim_mults=[1, 2, 4], layer_cross_attns=[False, False, False, True],
                     use_linear_attn=False, layer_attns=False, attend_at_middle=False, use_linear_cross_attn=False,
                     memory_efficient=True, channels=1, attn_heads=8)
    assert UNetConfig.from_reference_kwargs(yaml_unet, text_embed_dim=768) == UNetConfig()
    intended = dict(yaml_unet, layer_cross_attns=[False, False, True])
    assert UNetConfig.from_reference_kwargs(intended, listconfig_quirk=False).cross_attn_per_level == (
        False, False, True)
    with pytest.raises(ValueError, match="layer_attns"):
        UNetConfig.from_reference_kwargs(dict(yaml_unet, layer_attns=True))
