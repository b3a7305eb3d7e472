"""Position bias: unique-offset evaluation equals the release's N² evaluation, with far smaller MLP activations."""

from __future__ import annotations

import math

import pytest
import torch

from generatect_kedro.models.position_bias import (
    ContinuousPositionBias,
    relative_offset_index,
    relative_offsets,
)


def mlp_rows_seen(module: ContinuousPositionBias, fn) -> tuple[list[int], object]:
    """Run fn() and return, per MLP layer, how many elements its output activation had."""
    sizes: list[int] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for layer in module.net]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return sizes, result


@pytest.mark.parametrize(("grid", "dim", "heads"), [((4, 4), 16, 2), ((3, 5), 8, 3), ((3, 4, 2), 8, 2), ((5,), 4, 1)])
def test_unique_offsets_equal_brute_force(grid, dim, heads):
    torch.manual_seed(0)
    bias = ContinuousPositionBias(dim=dim, heads=heads, num_dims=len(grid))
    n = math.prod(grid)
    fast, dense = bias(*grid), bias.forward_dense(*grid)
    assert fast.shape == dense.shape == (heads, n, n)
    torch.testing.assert_close(fast, dense, atol=1e-6, rtol=1e-5)


def test_gather_index_gives_the_same_bias():
    torch.manual_seed(0)
    bias = ContinuousPositionBias(dim=8, heads=2, num_dims=3)
    grid = (3, 2, 4)
    table = bias.bias_table(*grid).flatten(1)
    index = bias.gather_index(*grid)
    assert index.dtype == torch.int64 and index.shape == (24, 24)
    torch.testing.assert_close(table[:, index], bias(*grid), atol=0, rtol=0)


def test_gradients_equal_brute_force():
    torch.manual_seed(0)
    bias = ContinuousPositionBias(dim=8, heads=2, num_dims=2)
    weight = torch.randn(2, 12, 12)
    grads = []
    for fn in (bias, bias.forward_dense):
        bias.zero_grad()
        (fn(3, 4) * weight).sum().backward()
        grads.append([p.grad.clone() for p in bias.parameters()])
    for fast, dense in zip(*grads):
        torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", [(8, 8), (21, 8, 8)])
def test_mlp_sees_only_unique_offsets(grid):
    """The MLP runs on prod(2g−1) offsets, not N² pairs; its activations no longer grow with N²."""
    dim, heads = 16, 2
    bias = ContinuousPositionBias(dim=dim, heads=heads, num_dims=len(grid))
    n, unique = math.prod(grid), math.prod(2 * g - 1 for g in grid)
    sizes, out = mlp_rows_seen(bias, lambda: bias(*grid))
    assert sizes == [unique * dim, unique * dim, unique * heads]
    assert out.shape == (heads, n, n)
    dense = [n * n * dim, n * n * dim, n * n * heads]  # what the release's N² evaluation holds
    assert sum(sizes) * 10 < sum(dense)


def test_dense_path_really_is_quadratic():
    bias = ContinuousPositionBias(dim=4, heads=1, num_dims=2)
    sizes, _ = mlp_rows_seen(bias, lambda: bias.forward_dense(4, 4))
    assert sizes[0] == 16 * 16 * 4


def test_offset_tables_are_cached_and_usable_after_inference_mode():
    assert relative_offsets((4, 4), True, torch.device("cpu")) is relative_offsets((4, 4), True, torch.device("cpu"))
    bias = ContinuousPositionBias(dim=4, heads=1, num_dims=2)
    with torch.inference_mode():
        bias(6, 7)
        relative_offset_index((6, 7), torch.device("cpu"))
    bias(6, 7).sum().backward()  # cached tensors are normal tensors, not inference tensors
    assert bias.net[0][0].weight.grad is not None


def test_offsets_are_log_distances():
    offsets = relative_offsets((3,), True, None)
    expected = torch.tensor([-1, 1]).float()[:, None] * torch.log(torch.tensor([3.0, 3.0]))[:, None]
    assert offsets.shape == (5, 1)
    torch.testing.assert_close(offsets[[0, -1]], expected)
    assert offsets[2].item() == 0.0
