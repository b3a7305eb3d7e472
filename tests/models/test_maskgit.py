"""MaskGIT model and sampler properties that need no fixture: shapes for any slice count, the cached context
is the same function, seeded sampling, guidance in one batched pass, and the token-critic path."""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import (
    MaskGITSamplerConfig,
    SamplingStep,
    num_masked_at_step,
    sample_tokens,
)
from generatect_kedro.models.token_critic import TokenCritic, critic_config

CONFIG = MaskGITConfig(num_tokens=32, dim=32, dim_context=16, depth=2, heads=2, dim_head=8, max_seq_len=128)
FAST = MaskGITSamplerConfig(steps=6)



def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights (LayerNorm gains, q/k scales and null k/v away from their init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> MaskGIT:
    torch.manual_seed(0)
    return perturbed(MaskGIT(CONFIG))


def text(b: int = 2, j: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(b, j, 16, generator=g)
    mask = torch.ones(b, j, dtype=torch.bool)
    mask[1:, 3:] = False
    return embeds * mask[..., None], mask


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 6])
def test_shapes_for_any_slice_count(model, t):
    grid = (t, 2, 3)
    embeds, mask = text()
    ids = torch.randint(0, 33, (2, *grid))
    with torch.no_grad():
        assert model(ids, embeds, mask).shape == (2, t * 6, 32)
        assert model(ids.flatten(1), embeds, mask, grid_shape=grid, return_embeds=True).shape == (2, t * 6, 32)
    out = sample_tokens(model, embeds, mask, grid, config=FAST, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, *grid) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < CONFIG.num_tokens  # never the mask id


def test_functional_layers_equal_the_shared_transformer(model):
    """Our cached attention path computes exactly what ``attention.Transformer`` computes."""
    grid = (3, 2, 2)
    embeds, mask = text()
    ids = torch.randint(0, 33, (2, 12))
    with torch.no_grad():
        x = model.token_emb(ids) + model.pos_emb(torch.arange(12))
        bias = model.continuous_pos_bias(*grid)
        ref = model.to_logits(model.transformer(
            x, video_shape=(2, *grid), attn_bias=bias, context=embeds, cross_attn_context_mask=mask
        ))
        ref_no_text = model.to_logits(model.transformer(x, video_shape=(2, *grid), attn_bias=bias))
        torch.testing.assert_close(model(ids, embeds, mask, grid_shape=grid), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(ids, grid_shape=grid), ref_no_text, atol=1e-5, rtol=1e-4)


def test_cached_context_equals_uncached(model):
    grid = (3, 2, 2)
    embeds, mask = text()
    ids = torch.randint(0, 33, (2, 12))
    with torch.no_grad():
        ctx = model.prepare_context(embeds, mask, grid)
        assert torch.equal(model(ids, grid_shape=grid, context=ctx), model(ids, embeds, mask, grid_shape=grid))
        guided_ctx = model.prepare_context(embeds, mask, grid, guidance=True)
        assert torch.equal(
            model.forward_with_cond_scale(ids, grid_shape=grid, cond_scale=3.0, context=guided_ctx),
            model.forward_with_cond_scale(ids, embeds, mask, grid_shape=grid, cond_scale=3.0),
        )
    cached = sample_tokens(model, embeds, mask, grid, config=FAST, generator=torch.Generator().manual_seed(1))
    uncached = sample_tokens(model, embeds, mask, grid, config=MaskGITSamplerConfig(steps=6, use_cache=False),
                             generator=torch.Generator().manual_seed(1))
    assert torch.equal(cached, uncached)


def test_guidance_is_one_batched_pass_of_cond_and_null(model):
    grid = (2, 2, 2)
    embeds, mask = text()
    ids = torch.randint(0, 33, (2, 8))
    calls = []
    handle = model.token_emb.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    with torch.no_grad():
        guided = model.forward_with_cond_scale(ids, embeds, mask, grid_shape=grid, cond_scale=4.0)
    handle.remove()
    assert calls == [4]
    with torch.no_grad():
        cond = model(ids, embeds, mask, grid_shape=grid)
        null = model(ids, embeds, mask, grid_shape=grid, cond_drop_prob=1.0)
        null_by_mask = model(ids, embeds, torch.zeros_like(mask), grid_shape=grid)
    torch.testing.assert_close(guided, null + (cond - null) * 4.0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(null, null_by_mask, atol=0, rtol=0)
    assert (cond - null).abs().max() > 1e-3


def test_sampling_is_seeded(model):
    embeds, mask = text()
    grid = (3, 2, 2)
    hot = MaskGITSamplerConfig(steps=6, temperature=20.0)  # the perturbed model's logits are very peaked
    a = sample_tokens(model, embeds, mask, grid, config=hot, generator=torch.Generator().manual_seed(7))
    b = sample_tokens(model, embeds, mask, grid, config=hot, generator=torch.Generator().manual_seed(7))
    c = sample_tokens(model, embeds, mask, grid, config=hot, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_remask_schedule_and_only_masked_positions_change(model):
    embeds, mask = text()
    grid = (3, 2, 2)
    steps: list[SamplingStep] = []
    sample_tokens(model, embeds, mask, grid, config=MaskGITSamplerConfig(steps=8), on_step=steps.append,
                  generator=torch.Generator().manual_seed(0))
    for rec in steps:
        expected = 12 if rec.step == 0 else num_masked_at_step(12, rec.step, 8)
        assert (rec.mask.sum(-1) == expected).all()
        assert torch.equal(rec.ids[~rec.mask], rec.input_ids[~rec.mask])
        assert (rec.input_ids[rec.mask] == model.mask_id).all()
    for prev, rec in zip(steps, steps[1:]):
        assert not (rec.mask & ~prev.mask).any()  # without a critic only just-predicted tokens are re-masked
    assert [num_masked_at_step(80, s, 18) for s in (0, 1, 17)] == [80, 80, 7]


def test_unconditional_sampling_and_model():
    torch.manual_seed(0)
    model = perturbed(MaskGIT(MaskGITConfig(**{**CONFIG.to_dict(), "unconditional": True})))
    assert not any("cross" in k or ".2." in k for k in model.state_dict() if k.startswith("transformer.layers"))
    out = sample_tokens(model, None, None, (2, 2, 2), batch_size=3, config=FAST, generator=torch.Generator())
    assert out.shape == (3, 2, 2, 2)


def test_critic_guided_sampling_is_seeded(model):
    torch.manual_seed(1)
    critic = perturbed(TokenCritic(critic_config(CONFIG, depth=1)), seed=1)
    embeds, mask = text()
    grid = (2, 2, 2)
    with torch.no_grad():
        assert critic(torch.randint(0, 33, (2, *grid)), embeds, mask).shape == (2, 8)
    steps: list[SamplingStep] = []
    a = sample_tokens(model, embeds, mask, grid, config=FAST, critic=critic, on_step=steps.append,
                      generator=torch.Generator().manual_seed(3))
    b = sample_tokens(model, embeds, mask, grid, config=MaskGITSamplerConfig(steps=6, use_cache=False), critic=critic,
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert critic.training is False and model.training is False


def test_input_validation(model):
    embeds, mask = text()
    with pytest.raises(ValueError, match="grid_shape"):
        model(torch.zeros(2, 12, dtype=torch.long), embeds, mask)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, 1, 1, dtype=torch.long))
    ctx = model.prepare_context(embeds, mask, (3, 2, 2), guidance=True)
    with pytest.raises(ValueError, match="forward_with_cond_scale"):
        model(torch.zeros(2, 12, dtype=torch.long), grid_shape=(3, 2, 2), context=ctx)
    with pytest.raises(ValueError, match="batch"):
        model.forward_with_cond_scale(torch.zeros(1, 12, dtype=torch.long), grid_shape=(3, 2, 2), context=ctx)
    with pytest.raises(ValueError, match="differs from the context"):  # same N, other grid: PEG/bias would be wrong
        model.forward_with_cond_scale(torch.zeros(2, 2, 3, 2, dtype=torch.long), context=ctx)
    plain_ctx = model.prepare_context(embeds, mask, (3, 2, 2))
    with pytest.raises(ValueError, match="not both"):
        model(torch.zeros(2, 12, dtype=torch.long), embeds, mask, context=plain_ctx)


def test_cond_scale_one_is_the_conditional_forward(model):
    embeds, mask = text()
    ids = torch.randint(0, 33, (2, 2, 2, 2))
    with torch.no_grad():
        assert torch.equal(model.forward_with_cond_scale(ids, embeds, mask, cond_scale=1.0), model(ids, embeds, mask))
