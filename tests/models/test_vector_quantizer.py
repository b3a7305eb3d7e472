"""Cosine-sim EMA VQ: assignment, raw-row output, straight-through, EMA rule, helpers (README §1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from generatect_kedro.models.vector_quantizer import CosineSimVQ, codebook_perplexity, codebook_usage


def make_vq(k: int = 6, d: int = 4, seed: int = 0) -> CosineSimVQ:
    torch.manual_seed(seed)
    vq = CosineSimVQ(d, k)
    vq.embed.mul_(torch.rand(k, 1) + 0.5)  # rows not unit-norm, like the released codebook
    return vq


def test_state_dict_names():
    vq = CosineSimVQ(8, 16)
    assert {k: tuple(v.shape) for k, v in vq.state_dict().items()} == {
        "embed": (16, 8), "cluster_size": (16,), "initted": (1,)
    }
    assert not list(vq.parameters())


def test_assignment_is_cosine_argmax_and_output_is_raw_row():
    vq = make_vq().eval()
    x = torch.randn(2, 5, 4) * 7
    out = vq(x)
    sims = F.normalize(x, dim=-1) @ F.normalize(vq.embed, dim=-1).t()
    assert torch.equal(out.ids, sims.argmax(-1))
    assert torch.equal(out.quantized, vq.embed[out.ids])
    torch.testing.assert_close(out.commit_loss, F.mse_loss(vq.embed[out.ids], x))


def test_chunked_assignment_equals_unchunked():
    vq = make_vq(k=32, d=8)
    x = torch.randn(1000, 8)
    ids = vq.assign(x)
    vq.assign_chunk_size = 7
    assert torch.equal(vq.assign(x), ids)


def test_eval_and_update_false_leave_buffers_alone():
    vq = make_vq()
    before = vq.embed.clone()
    vq.eval()(torch.randn(10, 4))
    vq.train()(torch.randn(10, 4), update_codebook=False)
    assert torch.equal(vq.embed, before) and not vq.cluster_size.any()


def test_ema_update_rule():
    vq = make_vq(k=4, d=3)
    vq.train()
    old = vq.embed.clone()
    x = torch.randn(9, 3)
    ids = vq.assign(x)
    vq(x)
    decay = vq.decay
    xn = F.normalize(x, dim=-1)
    for code in range(4):
        sel = ids == code
        new = F.normalize(xn[sel].mean(0), dim=0) if sel.any() else F.normalize(old[code], dim=0)
        torch.testing.assert_close(vq.embed[code], old[code] * decay + new * (1 - decay))
        torch.testing.assert_close(vq.cluster_size[code], sel.sum().float() * (1 - decay))


def test_straight_through_gradient_and_commit_loss():
    vq = make_vq().train()
    x = torch.randn(3, 4, requires_grad=True)
    out = vq(x, update_codebook=False)
    torch.testing.assert_close(out.quantized.detach(), vq.lookup(out.ids), atol=1e-6, rtol=0)  # x + (q − x)
    out.quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    x.grad = None
    vq(x).commit_loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_usage_and_perplexity():
    ids = torch.tensor([0, 1, 2, 3] * 5)
    assert codebook_usage(ids, 8) == 0.5
    assert math.isclose(codebook_perplexity(ids, 8).item(), 4.0, rel_tol=1e-5)
    assert math.isclose(codebook_perplexity(torch.zeros(10, dtype=torch.long), 8).item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 0.25])
def test_commitment_weight(weight):
    vq = make_vq()
    vq.commitment_weight = weight
    x = torch.randn(5, 4)
    out = vq.eval()(x)
    torch.testing.assert_close(out.commit_loss, F.mse_loss(out.quantized, x) * weight)
