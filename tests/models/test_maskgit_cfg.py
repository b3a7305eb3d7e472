"""Classifier-free guidance is really trained: text dropout teaches the null branch the unconditional law.

Toy task: a class c ~ prior (skewed) picks one fixed token pattern over a (3, 2, 2) grid and one fixed text
embedding. From a fully masked grid (the first sampling step) the conditional branch can read c from the
text; the null branch, evaluated exactly as the sampler evaluates it (the null half of the batched
guidance pass, cond_scale = 0), can at best predict each position's marginal, whose entropy is the floor
of its loss. With cond_drop_prob > 0 the null branch gets there; with cond_drop_prob = 0 (the release's
training) it never sees its own input and is far off — worse than an untrained model. If text dropout were
ignored, or the null branch of guidance differed from the one trained, this test fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generatect_kedro.losses.maskgit_loss import masked_token_loss
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig

K, GRID, N, CLASSES = 16, (3, 2, 2), 12, 4
PRIOR = torch.tensor([0.55, 0.25, 0.15, 0.05])
CONFIG = MaskGITConfig(num_tokens=K, dim=32, dim_context=8, depth=1, heads=2, dim_head=16, max_seq_len=N)


def task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    patterns = torch.stack([torch.randperm(K, generator=g)[:N] for _ in range(CLASSES)])  # (C, N)
    texts = torch.randn(CLASSES, 2, 8, generator=g)  # (C, text_len, dim_context)
    return patterns, texts


def draw(patterns, texts, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.multinomial(PRIOR, batch, replacement=True, generator=g)
    return patterns[c], texts[c]


def marginal_entropy(patterns: torch.Tensor) -> float:
    """Mean over positions of the entropy of the token marginal: the null branch's best achievable loss."""
    probs = torch.zeros(N, K)
    for c in range(CLASSES):
        probs[torch.arange(N), patterns[c]] += PRIOR[c]
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())


def train(cond_drop_prob: float, steps: int = 250) -> MaskGIT:
    patterns, texts = task()
    torch.manual_seed(0)
    model = MaskGIT(CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids, text = draw(patterns, texts, 32, g)
        ids = ids.reshape(-1, *GRID)
        loss, _ = masked_token_loss(model, ids, text, None, cond_drop_prob=cond_drop_prob, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def first_step_losses(model: MaskGIT) -> tuple[float, float]:
    """(null-branch loss, conditional loss) on fully masked grids of fresh samples."""
    patterns, texts = task()
    ids, text = draw(patterns, texts, 512, torch.Generator().manual_seed(123))
    masked = torch.full_like(ids, model.mask_id)
    with torch.no_grad():
        null = model.forward_with_cond_scale(masked, text, None, grid_shape=GRID, cond_scale=0.0)
        cond = model(masked, text, None, grid_shape=GRID)
    ce = lambda logits: F.cross_entropy(logits.reshape(-1, K), ids.reshape(-1)).item()  # noqa: E731
    return ce(null), ce(cond)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: threads only add synchronisation (and stall badly on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_text_dropout_trains_the_null_branch():
    floor = marginal_entropy(task()[0])
    torch.manual_seed(0)
    untrained_null, _ = first_step_losses(MaskGIT(CONFIG).eval())
    with_drop_null, with_drop_cond = first_step_losses(train(cond_drop_prob=0.3))
    no_drop_null, no_drop_cond = first_step_losses(train(cond_drop_prob=0.0))

    assert with_drop_cond < 0.2 and no_drop_cond < 0.2  # both learned the conditional task
    assert with_drop_null < floor + 0.35, (with_drop_null, floor)  # near the best possible null loss
    assert with_drop_null < untrained_null - 1.0, (with_drop_null, untrained_null)
    assert no_drop_null > with_drop_null + 1.5, (no_drop_null, with_drop_null)  # release-style: untrained null
