"""Continuous log-distance relative position bias, evaluated once per unique offset.

The released GenerateCT code (after SwinV2 / lucidrains' ``ContinuousPositionBias``) runs the bias MLP
over all N² (query, key) pairs. For MaskGIT's 101×8×8 grid that is a 6,464² × 64 hidden activation,
about 10.7 GB in fp32. The MLP output only depends on the relative offset, and a grid of shape
(g1, ..., gk) has just prod(2·gi − 1) distinct offsets, so we evaluate the MLP on those and expand the
(heads, 2g1−1, ..., 2gk−1) table to (heads, N, N) with strided windows: the same function, and the
gathered output is the only N² tensor. The gather index is available too, for attention kernels that
want to look the bias up lazily instead of materialising it.
"""

from __future__ import annotations

import functools
import math

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["ContinuousPositionBias", "relative_offsets", "relative_offset_index", "expand_offset_table"]

LEAKY_SLOPE = 0.1


def _log_distance(offsets: Tensor) -> Tensor:
    """sign(x)·log(1+|x|), written as the release writes it (log(|x|+1), not log1p) for bitwise parity."""
    return torch.sign(offsets) * torch.log(offsets.abs() + 1)


@functools.lru_cache(maxsize=64)
def relative_offsets(grid: tuple[int, ...], log_dist: bool = True, device: torch.device | None = None) -> Tensor:
    """All distinct offsets (query − key) of a grid: float (2g1−1, ..., 2gk−1, k), in ascending order per axis.

    Cached per (grid, device); built outside inference mode so the cached tensor is usable in training.
    """
    with torch.inference_mode(False), torch.no_grad():
        axes = [torch.arange(-(g - 1), g, device=device, dtype=torch.float32) for g in grid]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        return _log_distance(offsets) if log_dist else offsets


@functools.lru_cache(maxsize=16)
def relative_offset_index(grid: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """(N, N) int64 index of each (query, key) pair into the flattened offset table (row-major 'ij' grid)."""
    with torch.inference_mode(False), torch.no_grad():
        positions = torch.stack(
            torch.meshgrid(*[torch.arange(g, device=device) for g in grid], indexing="ij"), dim=-1
        ).reshape(-1, len(grid))  # (N, k)
        sizes = torch.tensor([2 * g - 1 for g in grid], device=device)
        strides = torch.ones_like(sizes)
        for axis in range(len(grid) - 2, -1, -1):
            strides[axis] = strides[axis + 1] * sizes[axis + 1]
        shift = torch.tensor([g - 1 for g in grid], device=device)
        rel = positions[:, None, :] - positions[None, :, :] + shift  # (N, N, k), all ≥ 0
        return (rel * strides).sum(dim=-1)


def expand_offset_table(table: Tensor, grid: tuple[int, ...]) -> Tensor:
    """(h, 2g1−1, ..., 2gk−1) offset table → (h, N, N) pair bias, bias[h, i, j] = table[h, pos_i − pos_j].

    Per axis, reversing the table turns offset p − q into index (g−1−p) + q, a sliding window (``unfold``
    is a view with an efficient backward); flipping the window start back gives rows in p order. The
    final flip is the one copy and produces the only N² tensor.
    """
    k = len(grid)
    flipped = table.flip(dims=tuple(range(1, k + 1)))  # (h, 2g1-1, ..., 2gk-1)
    windows = flipped
    for axis, g in enumerate(grid):
        # the axis to slide over is still at position 1 + axis: earlier unfolds only appended window dims
        windows = windows.unfold(1 + axis, g, 1)  # (h, ..., g_axis starts, ..., window_axis)
    bias = windows.flip(dims=tuple(range(1, k + 1)))  # rows p = g−1−start, columns q = window position
    n = math.prod(grid)
    return bias.reshape(table.shape[0], n, n)


class ContinuousPositionBias(nn.Module):
    """Log-distance continuous position bias MLP (CT-ViT: 2-D, hidden dim; MaskGIT: 3-D, hidden dim_head).

    Layer names (``net.0.0``, ``net.1.0``, ``net.2``) match the released checkpoints.
    """

    def __init__(self, *, dim: int, heads: int, num_dims: int = 2, layers: int = 2, log_dist: bool = True):
        super().__init__()
        self.num_dims = num_dims
        self.heads = heads
        self.log_dist = log_dist
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(num_dims, dim), nn.LeakyReLU(LEAKY_SLOPE))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(LEAKY_SLOPE)))
        self.net.append(nn.Linear(dim, heads))

    def mlp(self, offsets: Tensor) -> Tensor:
        """(..., num_dims) offsets → (..., heads)."""
        for layer in self.net:
            offsets = layer(offsets)
        return offsets

    def _device(self, device: torch.device | str | None) -> torch.device:
        return torch.device(device) if device is not None else self.net[-1].weight.device

    def bias_table(self, *grid: int, device: torch.device | str | None = None) -> Tensor:
        """(heads, 2g1−1, ..., 2gk−1): the MLP evaluated once per distinct relative offset."""
        if len(grid) != self.num_dims:
            raise ValueError(f"expected a {self.num_dims}-D grid, got {grid}")
        offsets = relative_offsets(tuple(grid), self.log_dist, self._device(device))
        out = self.mlp(offsets.to(self.net[-1].weight.dtype))
        return out.movedim(-1, 0)

    def gather_index(self, *grid: int, device: torch.device | str | None = None) -> Tensor:
        """(N, N) index into ``bias_table(...).flatten(1)``; cached per grid. Costs N² int64 itself."""
        return relative_offset_index(tuple(grid), self._device(device))

    def forward(self, *grid: int, device: torch.device | str | None = None) -> Tensor:
        """(heads, N, N) additive attention bias for a grid enumerated row-major ('ij' indexing)."""
        return expand_offset_table(self.bias_table(*grid, device=device), tuple(grid))

    def forward_dense(self, *grid: int, device: torch.device | str | None = None) -> Tensor:
        """The release's N²-pair evaluation. For verification and benchmarks only: memory grows with N²·dim."""
        device = self._device(device)
        positions = torch.stack(
            torch.meshgrid(*[torch.arange(g, device=device) for g in grid], indexing="ij"), dim=-1
        ).reshape(-1, len(grid))
        rel = (positions[:, None, :] - positions[None, :, :]).float()
        rel = _log_distance(rel) if self.log_dist else rel
        return rearrange(self.mlp(rel), "i j h -> h i j")
