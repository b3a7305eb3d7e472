"""Fused attention (SDPA) everywhere, and its masks under bf16 autocast.

Every attention goes through ``scaled_dot_product_attention``; the explicit release formulas are in
test_attention.py (CT-ViT / MaskGIT) and below (U-Net cross-attention). Under autocast SDPA computes in bf16, so
additive masks are built in bf16 with bf16's −max: float32's −max rounds to −inf there, and a fully masked row
then gives zeros on CPU instead of the release's uniform average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from generatect_kedro.models.attention import Attention, Transformer, sdpa_dtype
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.unet_blocks import CrossAttention

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)



def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_sdpa_dtype_follows_autocast():
    x = torch.zeros(2)
    assert sdpa_dtype(x) == torch.float32
    with torch.autocast(**BF16):
        assert sdpa_dtype(x) == torch.bfloat16
    with torch.autocast(**BF16, enabled=False):
        assert sdpa_dtype(x) == torch.float32


def test_unet_cross_attention_equals_the_release_formula():
    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim=12, dim_head=8, heads=4)
    perturb_(attn)
    x, context = torch.randn(2, 9, 32), torch.randn(2, 5, 12)
    with torch.no_grad():
        got = attn(x, context)
        q = attn.to_q(attn.norm(x)) * 8**-0.5
        k, v = attn.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=4) for t in (q, k, v))
        nk, nv = repeat(attn.null_kv, "two d -> two b h 1 d", b=2, h=4)
        k, v = torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2)
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k)
        out = torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)
        ref = attn.to_out(rearrange(out, "b h n d -> b n (h d)"))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_masks_are_built_in_the_autocast_dtype_and_stay_finite():
    attn = Attention(16, dim_head=8, heads=2, causal=True)
    q, k = torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8)
    bias, mask = torch.randn(2, 5, 5), torch.rand(1, 5) > 0.5
    assert attn._attn_mask(q, k, mask, bias).dtype == torch.float32
    with torch.autocast(**BF16):
        built = attn._attn_mask(q, k, mask, bias)
    assert built.dtype == torch.bfloat16 and torch.isfinite(built).all()
    assert built.min() == -torch.finfo(torch.bfloat16).max


def test_fully_masked_text_under_autocast_is_the_fp32_uniform_average():
    torch.manual_seed(0)
    attn = Attention(16, dim_context=8, dim_head=8, heads=2, num_null_kv=0, cross_attention=True)
    perturb_(attn)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    none = torch.zeros(2, 3, dtype=torch.bool)
    with torch.no_grad():
        ref = attn(x, context=context, mask=none)
        with torch.autocast(**BF16):
            got = attn(x, context=context, mask=none)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got.float(), ref, atol=5e-2, rtol=5e-2)


def test_bf16_transformer_with_bias_and_causal_mask_is_close_to_fp32():
    torch.manual_seed(0)
    model = Transformer(32, depth=2, dim_head=8, heads=4, causal=True, peg=True, peg_causal=True).eval()
    x, bias = torch.randn(2, 3 * 4, 32), torch.randn(4, 12, 12)
    with torch.no_grad():
        ref = model(x, video_shape=(2, 3, 2, 2), attn_bias=bias)
        with torch.autocast(**BF16):
            got = model(x, video_shape=(2, 3, 2, 2), attn_bias=bias)
    assert got.dtype == torch.float32  # the final bias-less LayerNorm runs in fp32 (layer_norm is not cast down)
    assert (got - ref).abs().max() < 0.1 and F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.999


def test_bf16_maskgit_context_and_guided_logits():
    torch.manual_seed(0)
    config = MaskGITConfig(num_tokens=33, dim=32, dim_context=8, depth=2, heads=2, dim_head=16, max_seq_len=64)
    model = MaskGIT(config).eval()
    grid, text, mask = (3, 2, 2), torch.randn(2, 4, 8), torch.tensor([[True] * 4, [True, True, False, False]])
    ids = torch.randint(0, 33, (2, 12))
    with torch.no_grad():
        ref = model.forward_with_cond_scale(ids, text, mask, grid_shape=grid, cond_scale=3.0)
        with torch.autocast(**BF16):
            ctx = model.prepare_context(text, mask, grid, guidance=True)
            got = model.forward_with_cond_scale(ids, grid_shape=grid, cond_scale=3.0, context=ctx)
    assert ctx.attn_bias.dtype == torch.bfloat16 and ctx.cross_mask.dtype == torch.bfloat16
    assert torch.isfinite(ctx.cross_mask).all()
    assert got.dtype == torch.float32  # the guidance mix runs in fp32
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.999
