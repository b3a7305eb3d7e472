"""Attention blocks: SDPA path equals a naive einsum implementation of the release's attention; PEG layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from generatect_kedro.models.attention import PEG, Attention, FeedForward, Transformer


def naive_attention(attn: Attention, x, context=None, mask=None, attn_bias=None, norm_self_kv=False):
    """The release's attention written out with einsum/softmax (README §1 'Attention')."""
    kv_input = x if context is None else (attn.context_norm(context) if attn.context_norm is not None else context)
    normed = attn.norm(x)
    if context is None and norm_self_kv:
        kv_input = normed
    q = attn.to_q(normed)
    k, v = attn.to_kv(kv_input).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))
    if attn.null_kv is not None:
        nk, nv = repeat(attn.null_kv, "h (n r) d -> b h n r d", b=x.shape[0], r=2).unbind(dim=-2)
        k, v = torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2)
    q, k = F.normalize(q, dim=-1) * attn.q_scale, F.normalize(k, dim=-1) * attn.k_scale
    sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * attn.scale
    i, j = sim.shape[-2:]
    if attn_bias is not None:
        sim = sim + F.pad(attn_bias, (attn.num_null_kv, 0), value=0.0)
    if mask is not None:
        keep = rearrange(F.pad(mask, (attn.num_null_kv, 0), value=True), "b j -> b 1 1 j")
        sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
    if attn.causal:
        sim = sim.masked_fill(torch.ones(i, j, dtype=torch.bool).triu(j - i + 1), -torch.finfo(sim.dtype).max)
    out = torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)
    return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


def perturb_(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("norm_self_kv", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_naive(norm_self_kv, causal):
    torch.manual_seed(0)
    attn = Attention(32, dim_head=8, heads=4, causal=causal, norm_self_kv=norm_self_kv)
    perturb_(attn)
    x = torch.randn(3, 10, 32)
    bias = torch.randn(4, 10, 10)
    mask = torch.rand(3, 10) > 0.3
    with torch.no_grad():
        got = attn(x, attn_bias=bias, mask=mask)
        ref = naive_attention(attn, x, attn_bias=bias, mask=mask, norm_self_kv=norm_self_kv)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_cross_attention_with_interleaved_null_kv_matches_naive():
    torch.manual_seed(0)
    attn = Attention(32, dim_context=12, dim_head=8, heads=2, num_null_kv=2, cross_attention=True)
    perturb_(attn)
    assert attn.null_kv.shape == (2, 4, 8) and attn.context_norm is not None
    x, ctx = torch.randn(2, 6, 32), torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        got, ref = attn(x, context=ctx, mask=mask), naive_attention(attn, x, ctx, mask)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        # fully masked text: only the null key/values are attended (MaskGIT's null condition)
        none = torch.zeros_like(mask)
        got, ref = attn(x, context=ctx, mask=none), naive_attention(attn, x, ctx, none)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_self_attention_has_no_release_extras():
    attn = Attention(16, dim_head=4, heads=2)
    keys = set(attn.state_dict())
    assert "null_kv" not in keys and not any("context_norm" in k or k.endswith("beta") for k in keys)


def test_kv_quirk_changes_the_function():
    torch.manual_seed(0)
    a = Attention(16, dim_head=4, heads=2)
    perturb_(a)
    b = Attention(16, dim_head=4, heads=2, norm_self_kv=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 16) * 3 + 1
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_feed_forward_layout():
    ff = FeedForward(64)
    assert [k for k in ff.state_dict()] == ["0.weight", "0.bias", "1.weight", "4.weight"]
    assert ff[1].weight.shape == (340, 64) and ff[4].weight.shape == (64, 170)


def test_peg_permuted_temporal_layout_equals_spatial_layout():
    """Corrected PEG: ((b h w), t, d) input gives the same conv as ((b t), (h w), d) input of the same grid."""
    torch.manual_seed(0)
    b, t, h, w, d = 2, 5, 3, 4, 6
    grid = torch.randn(b, t, h, w, d)
    spatial, temporal = PEG(d, causal=True), PEG(d, causal=True, token_order="bhwt", reshape_quirk=False)
    temporal.load_state_dict(spatial.state_dict())
    out_s = spatial(rearrange(grid, "b t h w d -> (b t) (h w) d"), (b, t, h, w))
    out_t = temporal(rearrange(grid, "b t h w d -> (b h w) t d"), (b, t, h, w))
    torch.testing.assert_close(rearrange(out_t, "(b h w) t d -> (b t) (h w) d", b=b, h=h, w=w), out_s)
    quirky = PEG(d, causal=True, token_order="bhwt", reshape_quirk=True)
    quirky.load_state_dict(spatial.state_dict())
    out_q = quirky(rearrange(grid, "b t h w d -> (b h w) t d"), (b, t, h, w))
    assert out_q.shape == out_t.shape and (out_q - out_t).abs().max() > 1e-3


def test_causal_peg_ignores_later_depth():
    torch.manual_seed(0)
    peg = PEG(4, causal=True)
    x = torch.randn(1, 6, 3, 3, 4)
    y = x.clone()
    y[:, 4:] += 1.0
    torch.testing.assert_close(peg(x, (1, 6, 3, 3))[:, :4], peg(y, (1, 6, 3, 3))[:, :4])


def test_transformer_skips_cross_attention_without_context():
    torch.manual_seed(0)
    tr = Transformer(16, depth=2, dim_head=4, heads=2, has_cross_attn=True, dim_context=8, peg=True)
    perturb_(tr)
    x = torch.randn(2, 12, 16)
    shape = (2, 3, 2, 2)
    base = tr(x, video_shape=shape)
    with torch.no_grad():
        for layer in tr.layers:
            layer[2].to_out.weight.mul_(2)
    torch.testing.assert_close(tr(x, video_shape=shape), base)
    ctx = torch.randn(2, 4, 8)
    assert tr(x, video_shape=shape, context=ctx).shape == x.shape
    with pytest.raises(ValueError, match="video_shape"):
        tr(x)
