"""MaskGIT losses: the cosine masking schedule, the release's training loss on the fixture (same draws from a
generator seeded as the release seeded its global RNG), real text dropout, and the token-critic BCE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.losses.maskgit_loss import (
    draw_token_mask,
    mask_fraction,
    masked_token_loss,
    token_critic_loss,
)
from generatect_kedro.models.convert import convert_maskgit_state_dict
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.token_critic import TokenCritic, critic_config

TINY = MaskGITConfig(num_tokens=16, dim=32, dim_context=8, depth=1, heads=2, dim_head=8, max_seq_len=64)


@pytest.mark.fixtures
def test_training_loss_matches_release(fixtures_dir: Path):
    meta = json.loads((fixtures_dir / "maskgit.json").read_text())
    config = MaskGITConfig.from_reference_kwargs(meta["constructor_kwargs"])
    model = MaskGIT(config)
    model.load_state_dict(convert_maskgit_state_dict(load_file(fixtures_dir / "maskgit_weights.safetensors"), config))
    io = load_file(fixtures_dir / "maskgit_io.safetensors")
    gt = io["train.gt_token_ids"]

    mask = draw_token_mask(2, 80, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.where(mask.reshape(gt.shape), model.mask_id, gt), io["train.masked_input"])

    model.train()
    loss, metrics = masked_token_loss(
        model, gt, io["input.text_embeds"], io["input.text_mask"], cond_drop_prob=0.0,
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(loss.reshape(1), io["train.loss"], atol=1e-5, rtol=1e-4)
    assert metrics["mask_fraction"].item() == pytest.approx(mask.float().mean().item())
    assert metrics["text_kept"].item() == 1.0
    loss.backward()
    assert model.token_emb.weight.grad is not None


def test_discrete_schedule_levels():
    frac = mask_fraction(4000, levels=18, generator=torch.Generator().manual_seed(0))
    levels = torch.tensor([math.cos(math.pi / 2 * k / 18) for k in range(18)])
    assert torch.isclose(frac[:, None], levels[None], atol=1e-6).any(dim=1).all()
    assert len(torch.unique(frac)) == 18  # every level is drawn; never fully unmasked (k = 18 excluded)


def test_continuous_schedule_and_counts():
    g = torch.Generator().manual_seed(0)
    frac = mask_fraction(2000, schedule="continuous", generator=g)
    assert ((frac > 0) & (frac <= 1)).all() and len(torch.unique(frac)) > 1000
    mask = draw_token_mask(500, 37, schedule="continuous", generator=g)
    assert mask.sum(-1).min() >= 1
    with pytest.raises(ValueError):
        mask_fraction(2, schedule="linear")  # type: ignore[arg-type]


def test_mask_counts_follow_the_level():
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    frac = mask_fraction(64, levels=18, generator=g)
    g.set_state(state)
    mask = draw_token_mask(64, 80, levels=18, generator=g)
    assert torch.equal(mask.sum(-1), (frac * 80).round().clamp(min=1).long())


def test_cond_drop_is_real_and_seeded():
    torch.manual_seed(0)
    model = MaskGIT(TINY)
    ids = torch.randint(0, 16, (64, 2, 2, 2))
    text = torch.randn(64, 3, 8)
    _, kept = masked_token_loss(model, ids, text, None, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    _, again = masked_token_loss(model, ids, text, None, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    assert 0.2 < kept["text_kept"].item() < 0.8
    assert kept["text_kept"] == again["text_kept"] and kept["loss"] == again["loss"]
    _, none = masked_token_loss(model, ids, text, None, cond_drop_prob=0.0, generator=torch.Generator())
    _, all_ = masked_token_loss(model, ids, text, None, cond_drop_prob=1.0, generator=torch.Generator())
    assert none["text_kept"].item() == 1.0 and all_["text_kept"].item() == 0.0


def test_loss_rejects_mask_ids_as_targets():
    model = MaskGIT(TINY)
    ids = torch.full((1, 1, 2, 2), 16)
    with pytest.raises(ValueError, match="ground-truth"):
        masked_token_loss(model, ids, None, None)


def test_token_critic_loss_trains_only_the_critic():
    torch.manual_seed(0)
    maskgit = MaskGIT(TINY)
    critic = TokenCritic(critic_config(TINY, depth=1))
    ids = torch.randint(0, 16, (8, 2, 2, 2))
    text = torch.randn(8, 3, 8)
    loss, metrics = token_critic_loss(critic, maskgit, ids, text, None, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert 0 < metrics["fake_fraction"].item() < 1
    assert all(p.grad is None for p in maskgit.parameters())
    assert critic.to_logits.weight.grad is not None


def test_loss_goes_through_a_wrapper_forward():
    """DDP / DeepSpeed wrap the model: attributes come from ``.module``, the call goes through the wrapper."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    torch.manual_seed(0)
    model = MaskGIT(TINY)
    wrapped = Wrapper(model)
    ids = torch.randint(0, 16, (4, 2, 2, 2))
    text = torch.randn(4, 3, 8)
    loss, _ = masked_token_loss(wrapped, ids, text, None, generator=torch.Generator().manual_seed(0))
    direct, _ = masked_token_loss(model, ids, text, None, generator=torch.Generator().manual_seed(0))
    assert wrapped.calls == 1 and torch.equal(loss, direct)
