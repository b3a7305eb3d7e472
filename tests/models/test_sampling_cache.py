"""MaskGIT sampling computes the step-invariant work once per call, with the same ids as recomputing it per step.

The position-bias MLP and every cross-attention layer's text k/v projection depend only on the grid and the
text; classifier-free guidance is one batched [cond; null] pass. The cached sampler must run each of those
projections once per call (the uncached one once per step) and give identical token ids for a seed.
Timings are in benchmarks/bench_sampling_cache.py, not here.
"""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, SamplingStep, sample_tokens
from generatect_kedro.models.token_critic import TokenCritic, critic_config

CONFIG = MaskGITConfig(num_tokens=33, dim=32, dim_context=8, depth=2, heads=2, dim_head=16, max_seq_len=64)
GRID, STEPS = (3, 2, 2), 5



@pytest.fixture(scope="module")
def model() -> MaskGIT:
    torch.manual_seed(0)
    return MaskGIT(CONFIG)


def text() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, generator=g), torch.tensor([[True] * 4, [True, True, False, False]])


def count_calls(model: MaskGIT) -> tuple[dict[str, int], list]:
    """Forward calls of the bias MLP's first layer, the cross-attention k/v projections and the token embedding."""
    counts = {"bias": 0, "text_kv": 0, "forwards": 0}

    def bump(key):
        def hook(*_):
            counts[key] += 1
        return hook

    handles = [model.continuous_pos_bias.net[0].register_forward_hook(bump("bias")),
               model.token_emb.register_forward_hook(bump("forwards"))]
    handles += [layer[2].to_kv.register_forward_hook(bump("text_kv")) for layer in model.transformer.layers]
    return counts, handles


@pytest.mark.parametrize("use_cache", [True, False])
def test_cache_computes_bias_and_text_kv_once_per_call(model, use_cache):
    embeds, mask = text()
    counts, handles = count_calls(model)
    try:
        sample_tokens(model, embeds, mask, GRID, config=MaskGITSamplerConfig(steps=STEPS, use_cache=use_cache),
                      generator=torch.Generator().manual_seed(0))
    finally:
        for h in handles:
            h.remove()
    per_call = 1 if use_cache else STEPS
    assert counts == {"bias": per_call, "text_kv": CONFIG.depth * per_call, "forwards": STEPS}  # 1 guided pass/step


@pytest.mark.parametrize(
    ("cond_scale", "conditional"), [(3.0, True), (1.0, True), (3.0, False)], ids=["guided", "cond_scale_1", "no_text"]
)
def test_cached_sampler_gives_the_uncached_ids(model, cond_scale, conditional):
    embeds, mask = text() if conditional else (None, None)
    runs = {}
    for use_cache in (True, False):
        steps: list[SamplingStep] = []
        ids = sample_tokens(model, embeds, mask, GRID, batch_size=2,
                            config=MaskGITSamplerConfig(steps=STEPS, cond_scale=cond_scale, use_cache=use_cache),
                            generator=torch.Generator().manual_seed(7), on_step=steps.append)
        runs[use_cache] = ids, torch.stack([s.logits for s in steps])
    assert torch.equal(runs[True][0], runs[False][0])
    assert torch.equal(runs[True][1], runs[False][1])  # every step's guided logits, bit for bit


def test_cached_sampler_with_a_critic_gives_the_uncached_ids(model):
    torch.manual_seed(1)
    critic = TokenCritic(critic_config(CONFIG, depth=1))
    embeds, mask = text()
    ids = [sample_tokens(model, embeds, mask, GRID, critic=critic, generator=torch.Generator().manual_seed(2),
                         config=MaskGITSamplerConfig(steps=STEPS, cond_scale=2.0, use_cache=use_cache))
           for use_cache in (True, False)]
    assert torch.equal(ids[0], ids[1])


def test_sampling_arithmetic_stays_fp32_under_bf16_autocast(model):
    embeds, mask = text()
    steps: list[SamplingStep] = []
    config = MaskGITSamplerConfig(steps=STEPS, cond_scale=3.0)
    ref = sample_tokens(model, embeds, mask, GRID, config=config, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = sample_tokens(model, embeds, mask, GRID, config=config, generator=torch.Generator().manual_seed(0),
                            on_step=steps.append)
    assert all(s.logits.dtype == torch.float32 and s.noise.dtype == torch.float32 for s in steps)
    assert ids.shape == ref.shape and (ids == ref).float().mean() > 0.5  # bf16 may flip a few near-ties
