"""Cosine-similarity EMA vector quantiser: ``vector-quantize-pytorch==1.1.2`` ``VectorQuantize(use_cosine_sim=True)``.

Behaviour reproduced from the release (see reference-fixtures README §1):
  * index = argmax cosine similarity between l2norm(token) and l2norm(codebook row);
  * quantised vector = the *raw* codebook row (released rows are not unit-norm);
  * training EMA, decay 0.8: per used code ``new`` = l2norm(mean of its l2-normalised tokens), per unused
    code ``new`` = l2norm(row); ``embed ← lerp(embed, new, 1 − decay)``; ``cluster_size ← lerp(cluster_size,
    counts, 1 − decay)``; no dead-code expiry;
  * straight-through gradient ``x + (q − x).detach()`` and commitment loss ``mse(q_st.detach(), x)``.
Buffers are ``embed`` (K, d), ``cluster_size`` (K,) and ``initted`` (1,); the converter maps the release's
``vq._codebook.*`` (with a leading codebook axis of 1) onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.models.attention import l2norm

__all__ = ["CosineSimVQ", "VQOutput", "codebook_usage", "codebook_perplexity"]


@dataclass
class VQOutput:
    quantized: Tensor  # (..., d): codebook rows (straight-through in training)
    ids: Tensor  # (...) int64
    commit_loss: Tensor  # scalar, already multiplied by the commitment weight


class CosineSimVQ(nn.Module):
    """EMA codebook with cosine-similarity assignment; codebook rows are buffers, not parameters."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        decay: float = 0.8,
        commitment_weight: float = 1.0,
        sync_distributed: bool = False,
        assign_chunk_size: int = 16384,
    ):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.sync_distributed = sync_distributed
        self.assign_chunk_size = assign_chunk_size
        embed = torch.empty(codebook_size, dim)
        nn.init.kaiming_uniform_(embed, a=math.sqrt(5))  # release: kaiming-uniform rows, l2-normalised
        self.register_buffer("embed", l2norm(embed))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("initted", torch.ones(1))

    def lookup(self, ids: Tensor) -> Tensor:
        """ids (...) → raw codebook rows (..., d)."""
        return F.embedding(ids, self.embed)

    def assign(self, x: Tensor) -> Tensor:
        """(..., d) tokens → (...) code ids, argmax cosine similarity; chunked so (n, K) stays bounded."""
        flat = l2norm(x.detach().float().reshape(-1, self.dim))
        codebook = l2norm(self.embed.float())
        ids = torch.cat([(chunk @ codebook.t()).argmax(dim=-1) for chunk in flat.split(self.assign_chunk_size)])
        return ids.reshape(x.shape[:-1])

    @torch.no_grad()
    def ema_update(self, x: Tensor, ids: Tensor) -> None:
        """One EMA step of ``cluster_size`` and ``embed`` from tokens x (..., d) assigned to ids (...)."""
        flat = l2norm(x.detach().float().reshape(-1, self.dim))
        ids = ids.reshape(-1)
        counts = torch.bincount(ids, minlength=self.codebook_size).to(flat.dtype)
        embed_sum = torch.zeros_like(self.embed, dtype=flat.dtype).index_add_(0, ids, flat)
        if self.sync_distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(embed_sum)
        self.cluster_size.lerp_(counts, 1 - self.decay)
        unused = counts == 0
        new = l2norm(embed_sum / counts.masked_fill(unused, 1.0)[:, None])
        new = torch.where(unused[:, None], l2norm(self.embed), new)
        self.embed.lerp_(new.to(self.embed.dtype), 1 - self.decay)

    def forward(self, x: Tensor, update_codebook: bool | None = None) -> VQOutput:
        """x (..., d). ``update_codebook`` defaults to ``self.training``; the update uses pre-update rows' ids."""
        ids = self.assign(x)
        quantized = self.lookup(ids)  # a copy: the in-place EMA below does not change it
        update = self.training if update_codebook is None else update_codebook
        if update:
            self.ema_update(x, ids)
        if self.training:
            quantized = x + (quantized - x).detach()
        if self.commitment_weight > 0:
            commit_loss = F.mse_loss(quantized.detach(), x) * self.commitment_weight
        else:
            commit_loss = x.new_zeros(())
        return VQOutput(quantized=quantized, ids=ids, commit_loss=commit_loss)


def codebook_usage(ids: Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that ``ids`` use (1.0 = every code appears at least once)."""
    return torch.unique(ids).numel() / codebook_size


def codebook_perplexity(ids: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the code histogram: the effective number of codes in use (1 .. codebook_size)."""
    probs = torch.bincount(ids.reshape(-1), minlength=codebook_size).float()
    probs = probs / probs.sum().clamp_min(1.0)
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
