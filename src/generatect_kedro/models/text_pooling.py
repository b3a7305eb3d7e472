"""Text conditioning of the super-resolution U-Net: projection, classifier-free-guidance nulls, Perceiver pooling.

The T5 tokens are projected to ``cond_dim``, padded/truncated to ``max_text_len``, and every position whose
mask is False (padding, or the whole prompt when the text is dropped) is replaced by a learned,
position-specific null embedding. A Perceiver resampler then pools the fixed-length sequence into a few
latents (cross-attention context); their mean, through an MLP, is added to the time conditioning (the
"text hidden", itself replaced by a learned null when the text is dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from generatect_kedro.models.unet_blocks import GainLayerNorm

__all__ = ["PerceiverAttention", "PerceiverResampler", "TextConditioning", "FeedForward"]


def FeedForward(dim: int, mult: float = 2.0) -> nn.Sequential:  # noqa: N802 (layer factory, release indices)
    """Gain-LN → Linear → GELU → Gain-LN → Linear (no biases); Sequential indices match the release."""
    hidden = int(dim * mult)
    return nn.Sequential(
        GainLayerNorm(dim),
        nn.Linear(dim, hidden, bias=False),
        nn.GELU(),
        GainLayerNorm(hidden),
        nn.Linear(hidden, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to (sequence ++ latents), as in Flamingo; both inputs LayerNorm'd (with bias)."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        x, latents = self.norm(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: float):
        super().__init__()
        self.attn = PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)
        self.ff = FeedForward(dim, mult=ff_mult)


class PerceiverResampler(nn.Module):
    """Any-length token sequence → ``num_latents_mean_pooled + num_latents`` latents.

    Learned absolute positions are added to the sequence (not to the mean-pooled summary, which is taken
    from the sequence without them). No key mask: padding was already replaced by null embeddings.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 2,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 32,
        num_latents_mean_pooled: int = 4,
        max_seq_len: int = 512,
        ff_mult: float = 4.0,
    ):
        super().__init__()
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.mean_to_latents = (
            nn.Sequential(
                GainLayerNorm(dim),
                nn.Linear(dim, dim * num_latents_mean_pooled),
                Rearrange("b (n d) -> b n d", n=num_latents_mean_pooled),
            )
            if num_latents_mean_pooled > 0
            else None
        )
        self.layers = nn.ModuleList(_PerceiverLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if n > self.pos_emb.num_embeddings:
            raise ValueError(f"sequence of {n} tokens exceeds the resampler's {self.pos_emb.num_embeddings} positions")
        x_with_pos = x + self.pos_emb(torch.arange(n, device=x.device))
        latents = repeat(self.latents.to(x.dtype), "n d -> b n d", b=x.shape[0])
        if self.mean_to_latents is not None:
            latents = torch.cat((self.mean_to_latents(x.mean(dim=1)), latents), dim=-2)
        for layer in self.layers:
            latents = layer.attn(x_with_pos, latents) + latents
            latents = layer.ff(latents) + latents
        return latents


class TextConditioning(nn.Module):
    """T5 tokens (b, n, text_embed_dim) + mask + keep-mask → (context tokens (b, m, cond_dim), hidden (b, time_dim))."""

    def __init__(
        self,
        *,
        text_embed_dim: int,
        cond_dim: int,
        time_cond_dim: int,
        max_text_len: int = 256,
        attn_pool: bool = True,
        pool_depth: int = 2,
        pool_dim_head: int = 64,
        pool_heads: int = 8,
        pool_num_latents: int = 32,
        pool_num_latents_mean_pooled: int = 4,
        pool_max_seq_len: int = 512,
        pool_ff_mult: float = 4.0,
    ):
        super().__init__()
        self.max_text_len = max_text_len
        self.to_cond = nn.Linear(text_embed_dim, cond_dim)
        self.null_embed = nn.Parameter(torch.randn(1, max_text_len, cond_dim))
        self.resampler = (
            PerceiverResampler(
                dim=cond_dim,
                depth=pool_depth,
                dim_head=pool_dim_head,
                heads=pool_heads,
                num_latents=pool_num_latents,
                num_latents_mean_pooled=pool_num_latents_mean_pooled,
                max_seq_len=pool_max_seq_len,
                ff_mult=pool_ff_mult,
            )
            if attn_pool
            else None
        )
        self.to_hidden = nn.Sequential(
            nn.LayerNorm(cond_dim),
            nn.Linear(cond_dim, time_cond_dim),
            nn.SiLU(),
            nn.Linear(time_cond_dim, time_cond_dim),
        )
        self.null_hidden = nn.Parameter(torch.randn(1, time_cond_dim))

    def forward(self, text_embeds: Tensor, text_mask: Tensor | None, keep: Tensor) -> tuple[Tensor, Tensor]:
        """``keep`` (b,) bool: False drops the prompt (classifier-free guidance / conditioning dropout)."""
        tokens = self.to_cond(text_embeds)[:, : self.max_text_len]
        remainder = self.max_text_len - tokens.shape[1]
        tokens = F.pad(tokens, (0, 0, 0, remainder))
        keep_tokens = rearrange(keep, "b -> b 1 1")
        if text_mask is not None:
            mask = F.pad(text_mask[:, : self.max_text_len].bool(), (0, remainder), value=False)
            keep_tokens = keep_tokens & rearrange(mask, "b n -> b n 1")
        tokens = torch.where(keep_tokens, tokens, self.null_embed.to(tokens.dtype))
        if self.resampler is not None:
            tokens = self.resampler(tokens)
        hidden = self.to_hidden(tokens.mean(dim=-2))
        hidden = torch.where(rearrange(keep, "b -> b 1"), hidden, self.null_hidden.to(hidden.dtype))
        return tokens, hidden
