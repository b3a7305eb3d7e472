"""Transformer blocks shared by CT-ViT, its discriminator and MaskGIT (after lucidrains' phenaki-pytorch).

Submodule names (``norm.gamma``, ``to_q``, ``to_kv``, ``q_scale``, ``layers.<i>.<0|1|2|3>``, ``norm_out``)
match the released checkpoints so the converters only rename the few places where we differ:
  * the bias-less LayerNorm has no always-zero ``beta`` buffer;
  * ``null_kv`` exists only when there are null key/values (the release stores a zero-size tensor);
  * ``context_norm`` exists only in cross-attention (the release also builds an unused one for self-attention).

``reference_quirks=True`` reproduces the release numerically: self-attention keys/values are projected
from the *un-normalised* layer input, and the PEG puts ((b h w), t) tokens back on the grid with a plain
reshape (scrambled). ``False`` gives the corrected function with the same parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

__all__ = [
    "LayerNorm", "GEGLU", "FeedForward", "PEG", "Attention", "Transformer", "exists", "default", "l2norm", "sdpa_dtype",
]

TokenOrder = Literal["bthw", "bhwt"]


def exists(val) -> bool:
    return val is not None


def default(val, d):
    return val if exists(val) else d


def l2norm(t: Tensor) -> Tensor:
    return F.normalize(t, dim=-1)


def sdpa_dtype(t: Tensor) -> torch.dtype:
    """The dtype SDPA computes in for ``t``'s device: autocast's when it is on (SDPA casts q, k, v and the mask
    to it), else ``t``'s. Building additive masks in it avoids an N² fp32 round trip, and its own −max (a
    float32 −max would round to −inf in bf16)."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class LayerNorm(nn.Module):
    """Bias-less LayerNorm (learned gain only); the release's zero ``beta`` buffer is dropped on conversion."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma)


class GEGLU(nn.Module):
    """First half of the last axis is the value, second half goes through GELU as the gate."""

    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def FeedForward(dim: int, mult: float = 4, dropout: float = 0.0) -> nn.Sequential:  # noqa: N802 (layer factory)
    """LayerNorm → Linear(dim, 2·inner) → GEGLU → Dropout → Linear(inner, dim); inner = int(mult·2/3·dim)."""
    inner_dim = int(mult * (2 / 3) * dim)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim * 2, bias=False),
        GEGLU(),
        nn.Dropout(dropout),
        nn.Linear(inner_dim, dim, bias=False),
    )


class PEG(nn.Module):
    """Position-generating depthwise 3×3×3 conv over the (t, h, w) token grid (no fixed length).

    ``causal`` pads depth 2 before / 0 after, so position t only sees t−2..t. ``token_order`` says how
    3-D input (batch', n, d) is laid out: 'bthw' for ((b t), (h w), d) or (b, (t h w), d); 'bhwt' for
    ((b h w), t, d). With ``reshape_quirk`` the 'bhwt' memory is reshaped as if it were 'bthw', as in the
    release (the conv then sees a scrambled grid; the inverse reshape unscrambles the result).
    """

    def __init__(self, dim: int, causal: bool = False, token_order: TokenOrder = "bthw", reshape_quirk: bool = True):
        super().__init__()
        if token_order not in ("bthw", "bhwt"):
            raise ValueError(f"token_order must be 'bthw' or 'bhwt', got {token_order!r}")
        self.causal = causal
        self.token_order = token_order
        self.reshape_quirk = reshape_quirk
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int]) -> Tensor:
        b, t, h, w = video_shape
        orig_shape = x.shape
        permute = x.ndim == 3 and self.token_order == "bhwt" and not self.reshape_quirk
        if permute:
            grid = rearrange(x, "(b h w) t d -> b d t h w", b=b, h=h, w=w)
        else:
            grid = rearrange(x.reshape(b, t, h, w, -1), "b t h w d -> b d t h w")
        frame_padding = (2, 0) if self.causal else (1, 1)
        grid = self.dsconv(F.pad(grid, (1, 1, 1, 1, *frame_padding), value=0.0))
        if permute:
            return rearrange(grid, "b d t h w -> (b h w) t d")
        return rearrange(grid, "b d t h w -> b t h w d").reshape(orig_shape)


class Attention(nn.Module):
    """Cosine-similarity multi-head attention through ``scaled_dot_product_attention``.

    q and k are l2-normalised per head (null keys included), multiplied by learned per-dimension
    ``q_scale``/``k_scale`` and a fixed ``scale`` (passed to SDPA so it does not rescale by 1/sqrt(d)).
    ``null_kv`` (heads, 2·num_null_kv, dim_head) is interleaved key0, value0, key1, ... and prepended;
    the additive bias and key mask are padded for it. Masked logits get −finfo.max, as in the release (of
    the dtype SDPA computes in, see :func:`sdpa_dtype`).
    ``causal`` is a plain causal mask (the release pairs it with ALiBi but never enables it in GenerateCT).
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_context: int | None = None,
        dim_head: int = 64,
        heads: int = 8,
        causal: bool = False,
        num_null_kv: int = 0,
        cross_attention: bool = False,
        norm_context: bool = True,
        dropout: float = 0.0,
        scale: float = 8.0,
        norm_self_kv: bool = False,
    ):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.scale = scale
        self.dropout = dropout
        self.num_null_kv = num_null_kv
        self.norm_self_kv = norm_self_kv
        inner_dim = dim_head * heads
        dim_context = default(dim_context, dim)

        self.norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim_context) if cross_attention and norm_context else None
        if num_null_kv > 0:
            self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))
        else:
            self.register_parameter("null_kv", None)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim_context if cross_attention else dim, inner_dim * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def _attn_mask(self, q: Tensor, k: Tensor, mask: Tensor | None, attn_bias: Tensor | None) -> Tensor | None:
        """Additive float mask (batch|1, heads|1, i, j) combining position bias, key padding and causality."""
        if attn_bias is None and mask is None and not self.causal:
            return None
        i, j = q.shape[-2], k.shape[-2]
        dtype = sdpa_dtype(q)
        if attn_bias is not None:
            if attn_bias.ndim == 3:  # (heads, i, j) → 4-D: a 3-D mask sends CPU SDPA to its O(N²)-memory math kernel
                attn_bias = attn_bias.unsqueeze(0)
            out = F.pad(attn_bias.to(dtype), (self.num_null_kv, 0), value=0.0)
        else:
            out = q.new_zeros(1, 1, i, j, dtype=dtype)
        keep = None
        if mask is not None:
            keep = rearrange(F.pad(mask, (self.num_null_kv, 0), value=True), "b j -> b 1 1 j")
        if self.causal:
            causal_keep = ~torch.ones((i, j), device=q.device, dtype=torch.bool).triu(j - i + 1)
            keep = causal_keep if keep is None else keep & causal_keep
        if keep is not None:
            out = out.masked_fill(~keep, -torch.finfo(dtype).max)
        return out

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """x (b, i, dim); context (b, j, dim_context) or None; mask (b, j) True = attend; attn_bias (.., i, j)."""
        if context is not None:
            kv_input = self.context_norm(context) if self.context_norm is not None else context
        normed = self.norm(x)
        if context is None:
            kv_input = normed if self.norm_self_kv else x  # release quirk: k/v from the un-normalised input

        q = self.to_q(normed)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))

        if self.null_kv is not None:
            nk, nv = repeat(self.null_kv, "h (n r) d -> r b h n d", b=x.shape[0], r=2).to(k.dtype)
            k = torch.cat((nk, k), dim=-2)
            v = torch.cat((nv, v), dim=-2)

        q = l2norm(q) * self.q_scale
        k = l2norm(k) * self.k_scale

        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self._attn_mask(q, k, mask, attn_bias),
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
        )
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Transformer(nn.Module):
    """Pre-norm layers of [PEG] → self-attention → [cross-attention] → feed-forward, then a bias-less norm.

    Each layer's ModuleList is (peg, self_attn, cross_attn, ff) with ``None`` holes, as in the release.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        dim_context: int | None = None,
        causal: bool = False,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: float = 4,
        peg: bool = False,
        peg_causal: bool = False,
        peg_token_order: TokenOrder = "bthw",
        attn_num_null_kv: int = 2,
        has_cross_attn: bool = False,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        reference_quirks: bool = True,
    ):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self_attn = Attention(
                dim, dim_head=dim_head, heads=heads, causal=causal, dropout=attn_dropout,
                norm_self_kv=not reference_quirks,
            )
            cross_attn = None
            if has_cross_attn:
                cross_attn = Attention(
                    dim, dim_context=dim_context, dim_head=dim_head, heads=heads, num_null_kv=attn_num_null_kv,
                    cross_attention=True, dropout=attn_dropout,
                )
            self.layers.append(
                nn.ModuleList([
                    PEG(dim, causal=peg_causal, token_order=peg_token_order, reshape_quirk=reference_quirks)
                    if peg else None,
                    self_attn,
                    cross_attn,
                    FeedForward(dim, mult=ff_mult, dropout=ff_dropout),
                ])
            )
        self.norm_out = LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        video_shape: tuple[int, int, int, int] | None = None,
        attn_bias: Tensor | None = None,
        context: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        cross_attn_context_mask: Tensor | None = None,
    ) -> Tensor:
        for peg, self_attn, cross_attn, ff in self.layers:
            if peg is not None:
                if video_shape is None:
                    raise ValueError("video_shape (b, t, h, w) is required when the transformer has a PEG")
                x = peg(x, video_shape) + x
            x = self_attn(x, attn_bias=attn_bias, mask=self_attn_mask) + x
            if cross_attn is not None and context is not None:
                x = cross_attn(x, context=context, mask=cross_attn_context_mask) + x
            x = ff(x) + x
        return self.norm_out(x)
