"""MaskGIT: the bidirectional, text-conditioned transformer over CT-ViT token grids (GenerateCT stage 2).

ids (b, t·h·w) in (t, h, w) order, ``mask_id = num_tokens`` where masked → token + learned absolute position
embedding (gradient-shrunk, α = 0.1) → ``depth`` × [non-causal PEG, self-attention with the 3-D continuous
position bias, cross-attention to the text tokens with 2 learned null key/values, GEGLU feed-forward] →
bias-less LayerNorm → logits over the codebook. Module names equal the release's ``MaskGit``.

Text conditioning: a False text-mask entry hides that text token; a sample whose whole mask is False sees
only the null key/values. That is the release's "null condition" used by classifier-free guidance (and by
``cond_drop_prob``); ``text_embeds=None`` instead skips cross-attention entirely (a different function).

The position bias is evaluated per unique offset (:class:`ContinuousPositionBias`), never as an N² MLP.
Everything that does not depend on the token ids — the (heads, N, N) bias, the text keys/values of every
cross-attention layer and their mask — lives in a :class:`MaskGITContext`. ``forward`` builds one per call
unless it is handed one; the sampler builds it once and reuses it for all steps (same numbers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from generatect_kedro.models.attention import Attention, Transformer, l2norm, sdpa_dtype
from generatect_kedro.models.position_bias import ContinuousPositionBias

__all__ = ["MaskGITConfig", "MaskGIT", "MaskGITContext", "text_keep_mask"]

GridShape = tuple[int, int, int]


@dataclass(frozen=True)
class MaskGITConfig:
    """MaskGIT hyper-parameters; defaults are the released ``transformer_pretrained.pt`` model's."""

    num_tokens: int = 8192  # CT-ViT codebook size; id num_tokens is the mask token
    dim: int = 512
    dim_context: int = 768  # T5-v1.1-base
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: float = 4
    max_seq_len: int = 10000
    gradient_shrink_alpha: float = 0.1
    num_null_kv: int = 2
    unconditional: bool = False  # no cross-attention layers at all
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    reference_quirks: bool = True  # self-attention k/v from the un-normalised input, as released

    def __post_init__(self) -> None:
        if not 0.0 <= self.gradient_shrink_alpha <= 1.0:
            raise ValueError(f"gradient_shrink_alpha must be in [0, 1], got {self.gradient_shrink_alpha}")
        if self.num_tokens < 1 or self.max_seq_len < 1:
            raise ValueError("num_tokens and max_seq_len must be positive")

    @property
    def mask_id(self) -> int:
        return self.num_tokens

    @classmethod
    def from_reference_kwargs(cls, kwargs: dict[str, Any], **overrides: Any) -> MaskGITConfig:
        """Build from the release's ``MaskGit(**kwargs)`` arguments (unknown ones are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in kwargs.items() if k in names}, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskGITContext:
    """Per-call constants of the transformer: position bias and text keys/values, reusable across steps.

    ``cross_kv[i]`` is layer i's (k, v), each (batch, heads, num_null_kv + text_len, dim_head), null
    key/values prepended and k already l2-normalised and scaled; ``cross_mask`` (batch, 1, 1, j) is additive
    (0 or −finfo.max). ``guidance`` contexts hold the conditional batch followed by its null copy.
    """

    grid_shape: GridShape
    attn_bias: Tensor  # (1, heads, N, N): 4-D, else CPU SDPA falls back to the O(N²)-memory math kernel
    batch_size: int | None = None  # None: no text (any batch size)
    cross_kv: list[tuple[Tensor, Tensor]] | None = None
    cross_mask: Tensor | None = None
    guidance: bool = False

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid_shape)


def text_keep_mask(
    batch: int, cond_drop_prob: float, *, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """(b,) bool, False = drop this sample's whole text: one uniform per sample, kept where U < 1 − p.

    No draw when p is 0 or ≥ 1 (the release's ``prob_mask_like``), so p = 0 consumes no randomness.
    """
    if cond_drop_prob <= 0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if cond_drop_prob >= 1:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return torch.rand((batch,), generator=generator, device=device) < 1 - cond_drop_prob


def _self_attention(attn: Attention, x: Tensor, bias: Tensor) -> Tensor:
    """``Attention.forward`` for self-attention with a precomputed (1, heads, N, N) bias (no null k/v, no mask)."""
    normed = attn.norm(x)
    kv_input = normed if attn.norm_self_kv else x  # release quirk: k/v from the un-normalised input
    q = attn.to_q(normed)
    k, v = attn.to_kv(kv_input).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))
    q = l2norm(q) * attn.q_scale
    k = l2norm(k) * attn.k_scale
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(sdpa_dtype(q)), dropout_p=attn.dropout if attn.training else 0.0, scale=attn.scale
    )
    return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


def _cross_kv(attn: Attention, context: Tensor) -> tuple[Tensor, Tensor]:
    """Text keys/values of one cross-attention layer, null k/v prepended, k normalised and scaled."""
    kv_input = attn.context_norm(context) if attn.context_norm is not None else context
    k, v = attn.to_kv(kv_input).chunk(2, dim=-1)
    k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (k, v))
    if attn.null_kv is not None:
        nk, nv = repeat(attn.null_kv, "h (n r) d -> r b h n d", b=context.shape[0], r=2).to(k.dtype)
        k = torch.cat((nk, k), dim=-2)
        v = torch.cat((nv, v), dim=-2)
    return l2norm(k) * attn.k_scale, v


def _cross_attention(attn: Attention, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    q = l2norm(rearrange(attn.to_q(attn.norm(x)), "b n (h d) -> b h n d", h=attn.heads)) * attn.q_scale
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.to(sdpa_dtype(q)), dropout_p=attn.dropout if attn.training else 0.0, scale=attn.scale
    )
    return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


class MaskGIT(nn.Module):
    """Masked-token transformer over (t, h, w) CT token grids with text cross-attention (see module doc)."""

    def __init__(self, config: MaskGITConfig):
        super().__init__()
        self.config = c = config
        self.mask_id = c.num_tokens
        self.token_emb = nn.Embedding(c.num_tokens + 1, c.dim)  # last row: the mask token
        self.pos_emb = nn.Embedding(c.max_seq_len, c.dim)
        self.continuous_pos_bias = ContinuousPositionBias(dim=c.dim_head, heads=c.heads, num_dims=3)
        self.transformer = Transformer(
            c.dim, depth=c.depth, dim_context=c.dim_context, dim_head=c.dim_head, heads=c.heads, ff_mult=c.ff_mult,
            peg=True, peg_causal=False, attn_num_null_kv=c.num_null_kv, has_cross_attn=not c.unconditional,
            attn_dropout=c.attn_dropout, ff_dropout=c.ff_dropout, reference_quirks=c.reference_quirks,
        )
        self.to_logits = self._make_head()

    def _make_head(self) -> nn.Module:
        return nn.Linear(self.config.dim, self.config.num_tokens)

    def _head(self, x: Tensor) -> Tensor:
        return self.to_logits(x)

    # ---- inputs ---------------------------------------------------------------------------------------

    @staticmethod
    def flatten_ids(ids: Tensor, grid_shape: GridShape | None = None) -> tuple[Tensor, GridShape]:
        """(b, t, h, w) or (b, n) + grid_shape → ((b, n), (t, h, w)), validated."""
        if ids.ndim == 4:
            grid = tuple(int(s) for s in ids.shape[1:])
            if grid_shape is not None and tuple(grid_shape) != grid:
                raise ValueError(f"grid_shape {tuple(grid_shape)} disagrees with ids of shape {tuple(ids.shape)}")
            return ids.reshape(ids.shape[0], -1), grid  # type: ignore[return-value]
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (b, t, h, w) or (b, n), got shape {tuple(ids.shape)}")
        if grid_shape is None or len(grid_shape) != 3 or math.prod(grid_shape) != ids.shape[1]:
            raise ValueError(f"flat ids of length {ids.shape[1]} need a (t, h, w) grid_shape, got {grid_shape}")
        return ids, tuple(int(s) for s in grid_shape)  # type: ignore[return-value]

    def _ids_for(
        self, ids: Tensor, grid_shape: GridShape | None, context: MaskGITContext | None
    ) -> tuple[Tensor, GridShape]:
        """Flatten ids; a context supplies the grid and must agree with the ids' own."""
        if context is None:
            return self.flatten_ids(ids, grid_shape)
        flat, grid = self.flatten_ids(ids, grid_shape if ids.ndim == 4 else (grid_shape or context.grid_shape))
        if grid != context.grid_shape:
            raise ValueError(f"ids grid {grid} differs from the context's {context.grid_shape}")
        return flat, grid

    def _text_mask(self, text_embeds: Tensor, text_mask: Tensor | None) -> Tensor:
        if text_mask is None:
            return torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        if text_mask.shape != text_embeds.shape[:2]:
            raise ValueError(f"text_mask {tuple(text_mask.shape)} does not match text {tuple(text_embeds.shape)}")
        return text_mask.bool()

    # ---- context (cacheable) --------------------------------------------------------------------------

    def prepare_context(
        self,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        grid_shape: GridShape,
        *,
        guidance: bool = False,
        cond_drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> MaskGITContext:
        """Position bias and text k/v for ``grid_shape``; with ``guidance`` the batch is [cond; null] (2b).

        ``cond_drop_prob`` drops each sample's whole text (mask all False) with that probability, drawing
        one uniform per sample from ``generator``.
        """
        grid = tuple(int(s) for s in grid_shape)
        if len(grid) != 3:
            raise ValueError(f"grid_shape must be (t, h, w), got {grid_shape}")
        if math.prod(grid) > self.config.max_seq_len:
            raise ValueError(f"{math.prod(grid)} tokens exceed max_seq_len {self.config.max_seq_len}")
        device = self.pos_emb.weight.device
        bias = self.continuous_pos_bias(*grid, device=device)[None]
        if text_embeds is None or self.config.unconditional:
            if guidance:
                raise ValueError("classifier-free guidance needs text embeddings and a conditional model")
            return MaskGITContext(grid, bias)

        keep = self._text_mask(text_embeds, text_mask)
        b = text_embeds.shape[0]
        if cond_drop_prob > 0:
            keep = keep & text_keep_mask(b, cond_drop_prob, generator=generator, device=keep.device)[:, None]
        if guidance:
            text_embeds = torch.cat((text_embeds, text_embeds), dim=0)
            keep = torch.cat((keep, torch.zeros_like(keep)), dim=0)

        num_null = self.config.num_null_kv
        keep = rearrange(F.pad(keep, (num_null, 0), value=True), "b j -> b 1 1 j")
        dtype = sdpa_dtype(self.pos_emb.weight)  # under autocast: its dtype and its −max (fp32's is −inf in bf16)
        cross_mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
        cross_mask = cross_mask.masked_fill(~keep, -torch.finfo(dtype).max)
        cross_kv = [_cross_kv(cross_attn, text_embeds) for _, _, cross_attn, _ in self.transformer.layers]
        return MaskGITContext(grid, bias, text_embeds.shape[0], cross_kv, cross_mask, guidance)

    # ---- forward --------------------------------------------------------------------------------------

    def embed(self, ids: Tensor, context: MaskGITContext) -> Tensor:
        """Flat ids (b, n) → final-normed embeddings (b, n, dim) under a prepared context."""
        b, n = ids.shape
        if n != context.num_tokens:
            raise ValueError(f"{n} tokens do not fill the context's grid {context.grid_shape}")
        if context.batch_size is not None and context.batch_size != b:
            raise ValueError(f"context was prepared for batch {context.batch_size}, got {b}")
        alpha = self.config.gradient_shrink_alpha
        x = self.token_emb(ids)
        x = self.pos_emb(torch.arange(n, device=ids.device)) + x
        x = x * alpha + x.detach() * (1 - alpha)  # gradient shrink (CogView); numerically x

        video_shape = (b, *context.grid_shape)
        for i, (peg, self_attn, cross_attn, ff) in enumerate(self.transformer.layers):
            x = peg(x, video_shape) + x
            x = _self_attention(self_attn, x, context.attn_bias) + x
            if cross_attn is not None and context.cross_kv is not None:
                k, v = context.cross_kv[i]
                x = _cross_attention(cross_attn, x, k, v, context.cross_mask) + x
            x = ff(x) + x
        return self.transformer.norm_out(x)

    def forward(
        self,
        ids: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        grid_shape: GridShape | None = None,
        cond_drop_prob: float = 0.0,
        return_embeds: bool = False,
        generator: torch.Generator | None = None,
        context: MaskGITContext | None = None,
    ) -> Tensor:
        """Logits (b, n, num_tokens) for ids (b, t, h, w) or (b, n) with ``grid_shape``.

        ``text_mask`` (b, j) True = real text token (default all True); ``cond_drop_prob`` drops whole
        texts per sample (training CFG); ``context`` replaces text/grid arguments with prepared constants.
        """
        ids, grid = self._ids_for(ids, grid_shape, context)
        if context is None:
            context = self.prepare_context(
                text_embeds, text_mask, grid, cond_drop_prob=cond_drop_prob, generator=generator
            )
        elif text_embeds is not None or cond_drop_prob:
            raise ValueError("pass either a prepared context or text_embeds / cond_drop_prob, not both")
        elif context.guidance:
            raise ValueError("a guidance context holds [cond; null]: use forward_with_cond_scale")
        x = self.embed(ids, context)
        return x if return_embeds else self._head(x)

    def forward_with_cond_scale(
        self,
        ids: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        grid_shape: GridShape | None = None,
        cond_scale: float = 5.0,
        context: MaskGITContext | None = None,
    ) -> Tensor:
        """Classifier-free guidance ``null + (cond − null)·cond_scale`` from ONE batched pass of size 2b.

        With ``cond_scale == 1`` (and no guidance context) it is the plain conditional forward. The mix is at
        least fp32: under bf16 autocast, cond_scale would otherwise amplify the logits' rounding.
        """
        flat, grid = self._ids_for(ids, grid_shape, context)
        if context is None:
            if cond_scale == 1 or text_embeds is None or self.config.unconditional:
                return self.forward(flat, text_embeds, text_mask, grid_shape=grid)
            context = self.prepare_context(text_embeds, text_mask, grid, guidance=True)
        elif text_embeds is not None:
            raise ValueError("pass either a prepared context or text_embeds, not both")
        if not context.guidance:
            return self.forward(flat, grid_shape=grid, context=context)
        both = self._head(self.embed(torch.cat((flat, flat), dim=0), context))
        cond, null = both.to(torch.promote_types(both.dtype, torch.float32)).chunk(2, dim=0)  # bf16 → fp32 mix
        return null + (cond - null) * cond_scale
